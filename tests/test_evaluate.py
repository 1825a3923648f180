"""``ctl evaluate`` end to end on a tiny synthetic data directory and a hand-built tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.backbones import Backbone, build_backbone
from model.ctl import CTLModel, load_run
from runtime.preprocess import PreprocessSpec, to_batch
from tests.test_ctl import paper_d_star
from training import evaluate as E
from training.crop import to_input_frame
from training.evaluation import attention as A
from training.evaluation import pairs as P
from training.evaluation import run as R
from training.evaluation import scoring as S
from training.features import build_cache, compute_features
from training.stl import Pair, STLData

CATEGORIES = ["Pants", "Shirts & Tops", "Shoes"]
LOWER = (0.2, 0.6, 0.8, 0.95)  # crop keeps the part above
UPPER = (0.3, 0.1, 0.7, 0.3)  # crop keeps the part below, where LOWER's product is visible
N_SCENES = 12
PER_CATEGORY = 8


def _image(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    base = rng.integers(0, 256, 3)
    noise = rng.integers(-40, 40, (size[1], size[0], 3))
    arr = np.clip(base + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 scenes with two labelled products each, 8 catalog products per category, a dress pair."""
    root = tmp_path_factory.mktemp("stl")
    rng = np.random.default_rng(0)
    cats: dict[str, str] = {}
    for c, name in enumerate(CATEGORIES):
        for i in range(PER_CATEGORY):
            sig = f"p{c}{i:02d}"
            cats[sig] = f"Apparel & Accessories|{name}"
            _image(root / "images" / "products" / f"{sig}.jpg", (40, 56), rng)
    cats["dress0"] = "Apparel & Accessories|Dresses"
    _image(root / "images" / "products" / "dress0.jpg", (40, 56), rng)
    pairs = []
    for s in range(N_SCENES):
        scene = f"s{s:02d}"
        _image(root / "images" / "scenes" / f"{scene}.jpg", (90, 120), rng)
        pairs.append({"scene": scene, "product": f"p{s % 3}{s % PER_CATEGORY:02d}", "bbox": LOWER})
        pairs.append({"scene": scene, "product": f"p{(s + 1) % 3}{s % 5:02d}", "bbox": UPPER})
    pairs.append({"scene": "s00", "product": "dress0", "bbox": UPPER})  # dropped category
    pairs.append({"scene": "missing", "product": "p000", "bbox": LOWER})  # no scene image
    (root / "fashion.json").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    (root / "fashion-cat.json").write_text(json.dumps(cats))
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as 'ctl train' writes it, with random heads on the tiny backbone."""
    root = tmp_path_factory.mktemp("run")
    backbone = build_backbone("tiny")
    torch.manual_seed(0)
    model = CTLModel(backbone.global_dim, backbone.local_dim, CATEGORIES, dim=16, hidden=32)
    model.eval()
    config = {"model": model.config(), "backbone": "tiny", "backbone_weights": None}
    torch.save({"model": model.state_dict(), "config": config}, root / "checkpoint.pt")
    split = {f"s{s:02d}": ("test" if s < 4 else "train") for s in range(N_SCENES)}
    (root / "split.json").write_text(json.dumps(split))
    (root / "popularity.json").write_text(json.dumps({"p000": 3, "p100": 2, "p200": 1}))
    (root / "metrics.json").write_text(json.dumps({"best_val_auc": 0.6, "best_epoch": 1}))
    return root


def _evaluate(run_dir: Path, data_dir: Path, out: Path, *extra: str) -> dict:
    argv = ["--run", str(run_dir), "--data", str(data_dir), "--out", str(out), "--bootstrap", "200"]
    assert E.main([*argv, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_evaluate_writes_metrics_pictures_report_and_repeats(
    run_dir: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    first = _evaluate(run_dir, data_dir, tmp_path / "a", "--seed", "3")
    assert first["n_pairs"] == 2 * N_SCENES  # the dress and the missing scene are left out
    assert first["n_products"] == len(CATEGORIES) * PER_CATEGORY
    required = {"auc", "auc_ci95", "top_k_accuracy", "mrr", "mrr_ci95", "mrr_10", "per_category"}
    assert required <= set(first)
    assert set(first["top_k_accuracy"]) == {"1", "5", "10", "20", "50"}
    assert set(first["per_category"]) == set(CATEGORIES)
    assert set(first["baselines"]) == {"random", "popularity", "imagenet", "global_only"}
    for baseline in first["baselines"].values():
        assert required <= set(baseline)
    assert first["baselines"]["random"]["auc"] == pytest.approx(0.5)
    assert first["auc_ci95"][0] <= first["auc"] <= first["auc_ci95"][1]
    att = first["attention"]
    assert set(att) >= {"top1_hit", "top3_hit", "random_top1_hit", "random_top3_hit"}
    assert att["n"] == 2 * N_SCENES  # each crop shows the scene's other product
    assert 0 < att["random_top1_hit"] < att["random_top3_hit"] < 1

    assert first["pairs_by_run_split"] == {"test": 2 * 4, "train": 2 * (N_SCENES - 4)}
    out = tmp_path / "a"
    report = (out / "report.md").read_text()
    assert "Not held out" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 5
    for name in pngs:
        assert (out / name).stat().st_size > 5000
        assert f"]({name})" in report

    again = _evaluate(run_dir, data_dir, tmp_path / "b", "--seed", "3")
    first.pop("seconds"), again.pop("seconds")
    assert again == first
    opts = R.Options(seed=4, n_boot=200)
    ev = R.run_evaluation(run_dir, data_dir, out / "cache", opts)
    assert "using cached backbone features" in caplog.text
    other = R.metrics_of(ev, opts)
    assert other["auc"] != first["auc"] or other["mrr_10"] != first["mrr_10"]
    assert other["mrr"] == first["mrr"]  # the full ranking does not depend on the seed


def test_split_test_uses_the_runs_split(run_dir: Path, data_dir: Path) -> None:
    split = json.loads((run_dir / "split.json").read_text())
    test = P.select_pairs(STLData.load(data_dir), CATEGORIES, "test", split)
    assert len(test) == 2 * 4 and all(split[p.scene] == "test" for p in test)


def test_bad_input_fails_with_a_clear_error(
    run_dir: Path, data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["--data", str(data_dir), "--out", str(tmp_path)]
    assert E.main(["--run", str(tmp_path / "nope"), *argv]) == 1
    assert "checkpoint.pt not found" in caplog.text
    assert E.main(["--run", str(run_dir), *argv, "--split", "val"]) == 1
    assert "no pairs of split 'val'" in caplog.text


def test_model_scorer_is_the_models_distance(run_dir: Path, data_dir: Path) -> None:
    """The vectorized ranking equals d* computed pair by pair with CTLModel.distances."""
    model, _ = load_run(run_dir)
    backbone = build_backbone("tiny")
    data = STLData.load(data_dir)
    pairs = P.select_pairs(data, CATEGORIES, "all", {})
    crops, rows, _ = P.crop_pairs(data, pairs)
    catalog = [s for s in data.available_products() if data.categories[s] in CATEGORIES]
    row_of = {s: i for i, s in enumerate(catalog)}
    eval_pairs = [
        P.EvalPair(p, r, row_of[p.product], data.categories[p.product])
        for p, r in zip(pairs, rows, strict=True)
        if r is not None
    ]
    scenes, products = _embed(backbone, model, data, catalog, crops)
    cats = np.array([data.categories[s] for s in catalog], dtype=object)
    groups = P.group_by_category(eval_pairs, CATEGORIES, cats, row_of, {})
    g = groups["Shoes"]
    dist = S.model_scorer(scenes, products)(g)
    crop = crops[int(g.crops[0])]
    x = torch.from_numpy(to_batch([P.load_crop(data, crop)], backbone.spec))
    with torch.no_grad():
        f_s, f_i, keys = model.scene_embeddings(*backbone(x))
        att = model.attention(keys, torch.tensor([g.cat_idx]))
        f_p = torch.from_numpy(products.emb[g.products])
        n = f_p.shape[0]
        d_star = paper_d_star(f_s.expand(n, -1), f_i.expand(n, -1, -1), att.expand(n, -1), f_p)
    assert dist[0] == pytest.approx(d_star.numpy(), abs=1e-4)


def _embed(
    backbone: Backbone, model: CTLModel, data: STLData, catalog: list[str], crops: list[P.Crop]
) -> tuple[S.Embedded, S.Embedded]:
    g, r = compute_features(backbone, [P.load_crop(data, c) for c in crops], 8)
    scenes = S.apply_heads(model, g, r, scenes=True)
    g, r = compute_features(backbone, [P.rgb(data.product_path(s)) for s in catalog], 5)
    return scenes, S.apply_heads(model, g, r, scenes=False)


def test_features_come_from_the_runs_feature_cache(data_dir: Path, tmp_path: Path) -> None:
    """A run's own feature cache is reused when it covers the items, and matches fresh features."""
    backbone = build_backbone("tiny")
    data = STLData.load(data_dir)
    cache, _ = build_cache(data, backbone, tmp_path, views=["orig"])
    crops, _, _ = P.crop_pairs(data, P.select_pairs(data, CATEGORIES, "all", {}))
    keys = [S._crop_key(c.scene, c.box) for c in crops]
    config = {"cache": str(cache.path)}
    found = S.from_training_cache(config, backbone, data, "scenes", keys)
    assert found is not None
    g, r = compute_features(backbone, [P.load_crop(data, c) for c in crops], 8)
    assert np.allclose(found[0], g, atol=2e-2) and np.allclose(found[1], r, atol=2e-2)
    products = cache.products
    found_p = S.from_training_cache(config, backbone, data, "products", products[::-1])
    assert found_p is not None
    assert np.allclose(found_p[0][::-1], np.asarray(cache.array("product_global", "orig")))
    assert S.from_training_cache(config, backbone, data, "products", ["unknown"]) is None
    assert S.from_training_cache({}, backbone, data, "products", products) is None


def test_other_boxes_and_input_frame() -> None:
    crop = P.Crop("s", UPPER, (0, 42, 90, 120), 90, 120)
    boxes = A.other_boxes(crop, "a", {"s": [("a", UPPER), ("b", LOWER), ("c", UPPER)]})
    assert len(boxes) == 1  # only LOWER; "c" shares the cropped-out box
    assert boxes[0] == pytest.approx((0.2, (72 - 42) / 78, 0.8, (114 - 42) / 78))
    pad = PreprocessSpec(size=10, resize="pad")
    # A 2:1 wide crop is letterboxed: its full height is the middle half of the square.
    assert to_input_frame((0.0, 0.0, 1.0, 1.0), 20, 10, pad.resize) == (0.0, 0.25, 1.0, 0.75)
    stretch = PreprocessSpec().resize
    assert to_input_frame((0.1, 0.2, 0.3, 0.4), 20, 10, stretch) == (0.1, 0.2, 0.3, 0.4)


def test_select_pairs_deduplicates_and_rejects_unknown_split(data_dir: Path) -> None:
    data = STLData.load(data_dir)
    data.pairs.append(Pair("s01", data.pairs[2].product, LOWER))
    assert len(P.select_pairs(data, CATEGORIES, "all", {})) == 2 * N_SCENES
    with pytest.raises(P.EvaluationError, match="unknown split"):
        P.select_pairs(data, CATEGORIES, "dev", {})


def test_grouping_excludes_scene_products_and_pairs_without_negatives() -> None:
    cats = np.array(["Shoes", "Pants", "Pants", "Pants"], dtype=object)
    row = {"a": 0, "b": 1, "c": 2, "d": 3}
    pairs = [
        P.EvalPair(Pair("s", "a", LOWER), 0, 0, "Shoes"),  # its only catalog product
        P.EvalPair(Pair("s", "b", UPPER), 1, 1, "Pants"),
        P.EvalPair(Pair("t", "d", LOWER), 2, 3, "Pants"),
    ]
    scene_products = {"s": {"a", "b", "c"}, "t": {"d"}}
    groups = P.group_by_category(pairs, ["Pants", "Shoes"], cats, row, scene_products)
    assert set(groups) == {"Pants"}
    g = groups["Pants"]
    assert g.products.tolist() == [1, 2, 3] and g.pos.tolist() == [0, 2]
    assert g.exclude.tolist() == [[False, True, False], [False, False, False]]


def test_members_and_the_prior_are_reported(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 2-member run: each member is ranked alone beside the ensemble, whose d* is the mean of
    theirs; the prior ranks by d* - lambda log(1 + training pairs), lambda from the run or the
    flag, and lambda 0 is the model itself."""
    backbone = build_backbone("tiny")
    torch.manual_seed(1)
    model = CTLModel(backbone.global_dim, backbone.local_dim, CATEGORIES, 16, 32, members=2)
    run = tmp_path / "run"
    run.mkdir()
    config = {"model": model.eval().config(), "backbone": "tiny", "backbone_weights": None}
    config["train"] = {"prior_weight": 0.5}
    torch.save({"model": model.state_dict(), "config": config}, run / "checkpoint.pt")
    (run / "popularity.json").write_text(json.dumps({"p000": 9, "p100": 5, "p200": 2}))
    m = _evaluate(run, data_dir, tmp_path / "a")
    assert set(m["members"]) == {"member_0", "member_1"}
    assert m["members"]["member_0"]["mrr"] != m["members"]["member_1"]["mrr"]
    assert m["prior"]["weight"] == 0.5 and m["prior"]["mrr"] != m["mrr"]
    assert "member_1: AUC" in capsys.readouterr().out
    assert "model+prior (lambda 0.5)" in (tmp_path / "a" / "report.md").read_text()
    off = _evaluate(run, data_dir, tmp_path / "b", "--prior-weight", "0")
    assert off["prior"]["weight"] == 0 and off["prior"]["mrr"] == off["mrr"]
    opts = R.Options(n_boot=10, prior_weight=0.5)
    ev = R.run_evaluation(run, data_dir, tmp_path / "a" / "cache", opts)
    g = ev.groups["Shoes"]
    members = [S.member_scorer(ev.scenes, ev.products, model, k)(g) for k in range(2)]
    ensemble = S.model_scorer(ev.scenes, ev.products)(g)
    np.testing.assert_allclose(ensemble, (members[0] + members[1]) / 2, atol=1e-5)


def test_ranking_through_exported_encoders_matches_torch(
    run_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    from model.export import export_run
    from training.calibration import calibration_images

    export_run(run_dir, tmp_path / "fp32")
    by_torch = _evaluate(run_dir, data_dir, tmp_path / "t")
    by_onnx = _evaluate(run_dir, data_dir, tmp_path / "o", "--artifacts", str(tmp_path / "fp32"))
    assert (by_torch["encoders"], by_onnx["encoders"]) == ("torch", str(tmp_path / "fp32"))
    # The same model; torch's side reads backbone features stored in float16.
    assert by_onnx["auc"] == pytest.approx(by_torch["auc"], abs=0.02)
    assert by_onnx["mrr"] == pytest.approx(by_torch["mrr"], abs=0.02)
    assert by_onnx["attention"]["top1_hit"] == pytest.approx(
        by_torch["attention"]["top1_hit"], abs=0.05
    )
    # int8, calibrated on the run's training split only (scenes s04-s11 here).
    scenes, products = calibration_images(run_dir, data_dir, 6)
    assert len(scenes) == 6 and len(products) == 6
    export_run(run_dir, tmp_path / "int8", precision="int8", calibration=(scenes, products))
    by_int8 = _evaluate(run_dir, data_dir, tmp_path / "i", "--artifacts", str(tmp_path / "int8"))
    assert by_int8["n_pairs"] == by_torch["n_pairs"]


def test_calibration_images_come_from_the_training_split_only(
    run_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import calibration

    seen: list[str] = []
    original = calibration.load_crop

    def spy(data: STLData, crop: P.Crop) -> Image.Image:
        seen.append(crop.scene)
        return original(data, crop)

    monkeypatch.setattr(calibration, "load_crop", spy)
    split = json.loads((run_dir / "split.json").read_text())
    scenes, products = calibration.calibration_images(run_dir, data_dir, 100)
    assert len(scenes) == len(seen) > 0 and all(split[s] == "train" for s in seen)
    held_out = {p.product for p in STLData.load(data_dir).pairs if split.get(p.scene) != "train"}
    assert len(products) == len(
        {p.product for p in STLData.load(data_dir).pairs if split.get(p.scene) == "train"}
        - held_out
        - {"dress0"}
    )
