"""Training: the loss, and a one-epoch smoke run on a few dozen real STL pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.backbones import build_backbone
from model.ctl import CTLModel, load_run
from tests.test_features import make_data
from training import crop
from training.features import build_cache
from training.loss import CTLLoss, triplet_loss
from training.metrics import region_relevance
from training.stl import STLData
from training.train import (
    Dataset,
    Streams,
    Tensors,
    TrainOptions,
    embed_triplets,
    train,
)


def small_stl(src: Path, dst: Path, n_pairs: int = 48, n_extra: int = 40) -> Path:
    """A few dozen real pairs (Shoes, Pants) and extra catalog products, images symlinked."""
    data = STLData.load(src)
    keep_cats = {"Shoes", "Pants"}
    pairs = [p for p in data.pairs_with_images() if data.categories[p.product] in keep_cats]
    pairs = pairs[:n_pairs]
    products = {p.product for p in pairs}
    extra = [p for p in data.available_products() if data.categories[p] in keep_cats]
    products |= set(extra[:n_extra])
    for sub in ("scenes", "products"):
        (dst / "images" / sub).mkdir(parents=True)
    for p in pairs:
        link = dst / "images" / "scenes" / f"{p.scene}.jpg"
        if not link.exists():
            link.symlink_to(data.scene_path(p.scene))
    for sig in products:
        (dst / "images" / "products" / f"{sig}.jpg").symlink_to(data.product_path(sig))
    lines = [
        json.dumps({"scene": p.scene, "product": p.product, "bbox": list(p.bbox)}) for p in pairs
    ]
    (dst / "fashion.json").write_text("\n".join(lines) + "\n")
    cats = {sig: f"Apparel|{data.categories[sig]}" for sig in products}
    (dst / "fashion-cat.json").write_text(json.dumps(cats))
    return dst


def test_zero_loss_when_positives_closer_by_margin() -> None:
    torch.manual_seed(0)
    model = CTLModel(8, 4, ["A", "B"], dim=6, hidden=8).eval()
    f_s, f_i, keys = model.scene_embeddings(torch.randn(5, 8), torch.randn(5, 49, 4))
    att = model.attention(keys, torch.tensor([0, 1, 0, 1, 1]))
    q = model.query_vector(f_s, f_i, att)
    f_p = F.normalize(q, dim=-1)
    d_pos = 2 - (q * f_p).sum(-1)  # d* of the product along the query: closest
    d_neg = 2 - (q * -f_p).sum(-1)  # the opposite one: farthest
    assert (d_neg - d_pos >= 0.2).all()
    assert triplet_loss(d_pos, d_neg, margin=0.2).item() == 0.0
    swapped = triplet_loss(d_neg, d_pos, margin=0.2)
    assert swapped.item() == pytest.approx((d_neg - d_pos + 0.2).mean().item())
    near = d_pos + 0.1  # closer, but not by the margin
    assert triplet_loss(d_pos, near, margin=0.2).item() == pytest.approx(0.1)


@pytest.mark.timeout(120)
def test_one_epoch_on_real_pairs(stl_dir: Path, tmp_path: Path) -> None:
    data_dir = small_stl(stl_dir, tmp_path / "data")
    out = tmp_path / "run"
    opts = TrainOptions.parse(
        [
            "--data",
            str(data_dir),
            "--cache",
            str(tmp_path / "cache"),
            "--backbone",
            "tiny",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--eval-every",
            "1",
            "--batch-size",
            "16",
        ]
    )
    metrics = train(opts)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["epochs"] == 1 and saved["backbone"] == "tiny" and saved["best_epoch"] == 1
    assert 0.0 <= saved["best_val_auc"] <= 1.0 and saved["best_val_auc"] == metrics["best_val_auc"]
    assert saved["train_pairs"] > 20 and saved["val_pairs"] > 0
    assert saved["seconds"]["features"] > 0 and saved["seconds"]["train"] > 0
    split = json.loads((out / "split.json").read_text())
    assert set(split.values()) <= {"train", "val", "test"}
    popularity = json.loads((out / "popularity.json").read_text())
    assert sum(popularity.values()) == saved["train_pairs"]
    assert json.loads((out / "categories.json").read_text()) == ["Pants", "Shoes"]
    assert "val AUC" in (out / "train.log").read_text()
    model, config = load_run(out)
    assert config["backbone"] == "tiny" and model.categories == ["Pants", "Shoes"]
    assert (out / "last.pt").is_file() and (out / "config.json").is_file()
    # The same seed gives the same run, initialization included.
    again_opts = opts.model_copy(update={"out": tmp_path / "again"})
    assert train(again_opts)["history"] == metrics["history"]
    again, _ = load_run(again_opts.out)
    for name, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name


@pytest.mark.timeout(180)
def test_resume_continues_the_same_run(stl_dir: Path, tmp_path: Path) -> None:
    """Two epochs, then a third from last.pt: the same as three epochs at once."""
    data_dir = small_stl(stl_dir, tmp_path / "data")
    flags = ["--data", str(data_dir), "--cache", str(tmp_path / "cache"), "--backbone", "tiny"]
    flags += ["--eval-every", "1", "--batch-size", "16", "--negatives", "hard"]
    flags += ["--members", "2"]  # each member's triplet stream is resumed too
    whole = train(TrainOptions.parse([*flags, "--out", str(tmp_path / "whole"), "--epochs", "3"]))
    part = tmp_path / "part"
    train(TrainOptions.parse([*flags, "--out", str(part), "--epochs", "2"]))
    resumed = train(TrainOptions.parse([*flags, "--out", str(part), "--epochs", "3", "--resume"]))
    assert "resuming after epoch 2" in (part / "train.log").read_text()  # not trained afresh
    assert [r["epoch"] for r in resumed["history"]] == [1, 2, 3]
    assert resumed["history"] == whole["history"]
    assert resumed["best_val_auc"] == whole["best_val_auc"]


def _toy(n_views: int = 1, scenes: int = 6, products: int = 12) -> tuple[CTLModel, Tensors]:
    torch.manual_seed(0)
    model = CTLModel(8, 4, ["A", "B"], dim=6, hidden=8).eval()
    t = Tensors(
        torch.randn(n_views, scenes, 8),
        torch.randn(n_views, scenes, 49, 4),
        torch.randn(n_views, products, 8),
    )
    return model, t


@pytest.mark.parametrize("mode", ["random", "hard", "semihard"])
def test_mined_negatives(mode: str) -> None:
    model, t = _toy()
    batch = np.array([[i, i, 6 + i % 4] for i in range(6)])
    cats = torch.zeros(6, dtype=torch.long)  # one category: every batch product is a candidate
    excl = torch.zeros(6, 12, dtype=torch.bool)
    excl[torch.arange(6), torch.arange(6)] = True  # a scene's own product is never its negative
    loss_fn = CTLLoss(margin=0.2, negatives=mode)
    q, f_pos, f_neg, _ = embed_triplets(model, t, batch[None], cats[None], torch.Generator())
    loss = loss_fn(q[0], f_pos[0], f_neg[0], cats, excl)
    with torch.no_grad():
        f_s, f_i, keys = model.scene_embeddings(t.scene_global[0, :6], t.scene_regions[0, :6])
        q = model.query_vector(f_s, f_i, model.attention(keys, cats))
        f_p = model.product_embedding(t.product_global[0])
        cand = torch.cat([f_p[batch[:, 1]], f_p[batch[:, 2]]])
        sim = q @ cand.T
        sim_pos = sim[torch.arange(6), torch.arange(6)]
        expected = []
        for i in range(6):
            ok = [j for j in range(12) if not excl[i, j]]
            if mode == "semihard":
                ok = [j for j in ok if sim[i, j] < sim_pos[i]] or [6 + i]
            elif mode == "random":
                ok = [6 + i]
            expected.append(max(float(sim[i, j]) for j in ok))
        ref = triplet_loss(2 - sim_pos, 2 - torch.tensor(expected), 0.2)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5)


def test_attention_targets_are_the_other_products_in_the_crop(tmp_path: Path) -> None:
    """Scene s0 labels p0 (the crop is above it) and p1, whose box covers most of that crop:
    p0's example should attend there; scenes with one product get no target."""
    data = make_data(tmp_path / "data")
    cache, _ = build_cache(data, build_backbone("tiny"), tmp_path / "cache", views=("orig",))
    ds = Dataset.build(cache, data, seed=0)
    ds.split = dict.fromkeys(ds.split, "train")
    ds.add_attention_targets(cache, data)
    (ex,) = [e for e in cache.examples if e["scene"] == "s0"]
    assert list(ds.attention_targets) == [(ex["crop"], ds.products.index("p0"))]
    box = cache.meta["crops"][ex["crop"]][1]  # the region above p0's grown box: 60 x 49
    assert box == [0, 0, 60, 49]
    other = crop.box_in_crop((0.1, 0.0, 0.9, 0.95), tuple(box), 60, 90)
    expected = region_relevance([other], 7)
    assert 0 < expected.sum() < 49
    np.testing.assert_array_equal(
        ds.attention_targets[ex["crop"], ds.products.index("p0")], expected
    )
    p0 = ds.products.index("p0")
    rows = np.array([[ex["crop"], p0, 1], [ex["crop"] + 1, p0, 0]])
    target = ds.attention_target(rows)
    assert target[0].tolist() == expected.tolist() and not target[1].any()


def test_members_train_as_one_with_their_own_streams(stl_dir: Path, tmp_path: Path) -> None:
    """Three members: their own initializations and triplets (one batched step each), and the
    exported ensemble ranks by the mean of the members' d*."""
    data_dir = small_stl(stl_dir, tmp_path / "data")
    flags = ["--data", str(data_dir), "--cache", str(tmp_path / "cache"), "--backbone", "tiny"]
    flags += ["--eval-every", "1", "--batch-size", "16", "--epochs", "1", "--members", "3"]
    metrics = train(TrainOptions.parse([*flags, "--out", str(tmp_path / "run")]))
    assert metrics["members"] == 3
    model, config = load_run(tmp_path / "run")
    assert model.members == 3 and config["model"]["members"] == 3 and model.out_dim == 3 * 128
    w = model.g_global.w1.detach()
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    streams = Streams.seeded(0, 0, 3)
    sampler_rows = [rng.integers(1 << 30) for rng in streams.rngs]
    assert len(set(sampler_rows)) == 3  # each member draws its own triplets
    single = Streams.seeded(0, 0, 1)
    assert single.rngs[0].integers(1 << 30) == sampler_rows[0]  # member 0 = the single model's
    g, r, p = (
        torch.randn(4, model.global_dim),
        torch.randn(4, 49, model.local_dim),
        torch.randn(5, model.global_dim),
    )
    with torch.no_grad():
        f_s, f_i, keys = model.scene_embeddings(g, r)
        q = model.query_vector(f_s, f_i, model.attention_all(keys))[:, 1]
        f_p = model.product_embedding(p)
        ms, mi, mk = model.member_scenes(g.expand(3, *g.shape), r.expand(3, *r.shape))
        mq = model.query_vector(ms, mi, model.attention(mk, torch.ones(3, 4, dtype=torch.long)))
        mp = model.member_products(p.expand(3, *p.shape))
    torch.testing.assert_close(f_s.norm(dim=-1), torch.ones(4))
    each = 2 - torch.einsum("mbd,mpd->mbp", mq, mp)
    torch.testing.assert_close(2 - q @ f_p.T, each.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.member_slice(q, 2), mq[2], atol=1e-5, rtol=0)


def test_single_model_checkpoints_from_before_members_load(tmp_path: Path) -> None:
    """A checkpoint with one ``fc1``/``fc2`` Linear pair per head loads into the batched heads
    and gives the same embeddings."""
    torch.manual_seed(0)
    model = CTLModel(8, 4, ["A", "B"], dim=6, hidden=8).eval()
    old = {}
    for key, value in model.state_dict().items():
        head, _, name = key.rpartition(".")
        if name in ("w1", "b1", "w2", "b2"):
            key, value = f"{head}.fc{name[1]}.{'weight' if name[0] == 'w' else 'bias'}", value[0]
        old[key] = value
    cfg = {k: v for k, v in model.config().items() if k != "members"}
    (tmp_path / "run").mkdir()
    torch.save({"model": old, "config": {"model": cfg}}, tmp_path / "run" / "checkpoint.pt")
    loaded, _ = load_run(tmp_path / "run")
    g = torch.randn(3, 8)
    torch.testing.assert_close(loaded.product_embedding(g), model.product_embedding(g))
