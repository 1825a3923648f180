"""``ctl evaluate``: the paper's metrics, baselines, attention analysis, pictures and report.

The scenes are cropped here (the CTL rules) and every product of the data directory is
embedded once, so ranking all pairs against their whole category is a few matrix products:
with unit vectors, d*(s, p) = 2 - <q(s, c), f_p> where q = f_s + sum_i a_i(c) f_i.
Backbone features come from the run's own feature cache when it covers the data (same backbone,
data and crop rules), else they are computed; either way they are kept under ``OUT_DIR/cache``
(keyed by backbone and inputs), so a repeated evaluation, of this run or of a later run on the
same backbone, only applies the heads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.backbones import Backbone, BackboneError, build_backbone
from model.ctl import CTLModel, load_run
from model.preprocess import PreprocessSpec
from service.config import Settings
from training import metrics as M
from training import plots
from training.atomic import atomic_path, write_json
from training.crop import CropResult, CropStats, PixelBox, box_in_crop, crop_box
from training.features import FeatureCache, cache_key, compute_features
from training.report import Picture, write_report
from training.stl import BBox, Pair, STLData

log = logging.getLogger(__name__)

SPLITS = ("all", "train", "val", "test")
CURVE_KS = tuple(range(1, 101))
BASELINES = ("random", "popularity", "imagenet", "global_only")
SCORER_NOTES = {
    "model": "the trained CTL model: d* = (d_global + d_local) / 2",
    "global_only": "the same model without its local/attention branch: d_global only",
    "imagenet": "squared L2 distance between the raw frozen-backbone global vectors",
    "popularity": "products ranked by their pair count in the run's training split",
    "random": "a uniformly random ranking, computed exactly in expectation",
}
EMBED_CHUNK = 256


class EvaluationError(RuntimeError):
    """The run or the data cannot be evaluated (no pairs left, unknown split, ...)."""


@dataclass(frozen=True)
class Options:
    """Knobs of one evaluation (the CLI flags)."""

    split: str = "all"
    seed: int = 0
    draws: int = 10
    n_boot: int = 1000
    batch_size: int = 32
    samples: int = 8
    compat_rows: int = 4
    tsne_products: int = 1000
    tsne_scenes: int = 300


@dataclass(frozen=True)
class Crop:
    """One scene crop, shared by the pairs of that scene with the same box."""

    scene: str
    bbox: BBox
    box: PixelBox
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]


@dataclass(frozen=True)
class Embedded:
    """Backbone and head outputs for a list of images."""

    raw: np.ndarray  # (N, G) backbone global vectors
    emb: np.ndarray  # (N, D) f_s for scenes, f_p for products
    queries: np.ndarray  # (N, C, D) q per category for scenes; empty for products
    attention: np.ndarray  # (N, C, R) for scenes; empty for products


@dataclass(frozen=True)
class EvalPair:
    """A test pair resolved to its crop row, catalog row and category."""

    pair: Pair
    crop: int
    product: int
    category: str


@dataclass(frozen=True)
class CategoryPairs:
    """The pairs of one category against all the category's catalog products."""

    cat_idx: int
    pairs: np.ndarray  # (n,) rows into the evaluation's pair list
    crops: np.ndarray  # (n,) crop rows
    products: np.ndarray  # (m,) catalog rows
    pos: np.ndarray  # (n,) column of each positive
    exclude: np.ndarray  # (n, m) other products labelled with the same scene


@dataclass
class Evaluation:
    """Everything one evaluation computed; the metrics and the pictures are read off it."""

    data: STLData
    run_dir: Path
    backbone: Backbone
    pairs: list[EvalPair]
    crops: list[Crop]
    crop_stats: CropStats
    catalog: list[str]
    groups: dict[str, CategoryPairs]
    scenes: Embedded
    products: Embedded
    ranked: dict[str, M.PairScores]
    attention: np.ndarray  # (n, R) attention of each pair's category
    relevant: np.ndarray  # (n, R) regions covered by other labelled products
    boxes: list[list[BBox]]  # other labelled products of each pair, in crop coordinates
    run_splits: dict[str, int]  # pairs per split of the run ("unseen": scenes it never saw)
    seconds: dict[str, float]

    def model_distances(self, i: int) -> tuple[CategoryPairs, int, np.ndarray]:
        """Pair ``i``'s category, its row there and d* to every product of the category."""
        p = self.pairs[i]
        g = self.groups[p.category]
        row = int(np.flatnonzero(g.pairs == i)[0])
        q = self.scenes.queries[p.crop, g.cat_idx]
        return g, row, 2.0 - self.products.emb[g.products] @ q


# --- inputs ---


def select_pairs(
    data: STLData, categories: Sequence[str], split: str, run_split: dict[str, str]
) -> list[Pair]:
    """Pairs with both images in one of the model's categories and the split, deduplicated."""
    if split not in SPLITS:
        raise EvaluationError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    known = set(categories)
    seen: set[tuple[str, str]] = set()
    out: list[Pair] = []
    for p in data.pairs_with_images():
        if data.categories.get(p.product) not in known or (p.scene, p.product) in seen:
            continue
        if split != "all" and run_split.get(p.scene) != split:
            continue
        seen.add((p.scene, p.product))
        out.append(p)
    if not out:
        hint = " (is this the data the run was trained on?)" if split != "all" else ""
        raise EvaluationError(f"no pairs of split {split!r} with both images in {data.root}{hint}")
    return out


def crop_pairs(
    data: STLData, pairs: Sequence[Pair]
) -> tuple[list[Crop], list[int | None], CropStats]:
    """The CTL crop of each pair: unique crops, each pair's crop row (``None``: dropped), stats."""
    stats = CropStats()
    crops: list[Crop] = []
    results: dict[tuple[str, BBox], tuple[CropResult, int | None]] = {}
    rows: list[int | None] = []
    for p in pairs:
        key = (p.scene, p.bbox)
        if key not in results:
            with Image.open(data.scene_path(p.scene)) as im:
                w, h = im.size
            result = crop_box(p.bbox, w, h, data.domain)
            row = None
            if result.box is not None:
                row = len(crops)
                crops.append(Crop(p.scene, p.bbox, result.box, w, h))
            results[key] = (result, row)
        result, row = results[key]
        stats.add(result.reason)
        rows.append(row)
    return crops, rows, stats


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def load_crop(data: STLData, crop: Crop) -> Image.Image:
    return rgb(data.scene_path(crop.scene)).crop(crop.box)


# --- embeddings ---


def compute(
    load: Callable[[Any], Image.Image],
    items: Sequence[Any],
    backbone: Backbone,
    batch_size: int,
    regions: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Backbone global vectors (N, G) and, if asked, region grids (N, R, L) of ``items``."""
    gs, rs = [], []
    t0 = time.monotonic()
    for start in range(0, len(items), EMBED_CHUNK):
        images = [load(i) for i in items[start : start + EMBED_CHUNK]]
        g, r = compute_features(backbone, images, batch_size)
        gs.append(g)
        if regions:
            rs.append(r)
        done = start + len(images)
        rate = done / max(1e-9, time.monotonic() - t0)
        log.info("backbone: %d/%d images (%.0f images/s)", done, len(items), rate)
    empty = np.zeros((0,), np.float32)
    return np.concatenate(gs) if gs else empty, np.concatenate(rs) if rs else empty


def from_training_cache(
    config: dict[str, Any], backbone: Backbone, data: STLData, kind: str, keys: Sequence[str]
) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's own feature cache ('orig' view), when it was built for this backbone and data
    and holds every item; ``None`` otherwise."""
    path = Path(config.get("cache") or "")
    if path.name != cache_key(backbone, data) or not (path / "meta.json").is_file():
        return None
    cache = FeatureCache(path, json.loads((path / "meta.json").read_text()))
    if "orig" not in cache.views:
        return None
    if kind == "products":
        row = {s: i for i, s in enumerate(cache.products)}
    else:
        row = {_crop_key(s, tuple(b)): i for i, (s, b) in enumerate(cache.meta["crops"])}
    if any(k not in row for k in keys):
        return None
    rows = np.array([row[k] for k in keys], np.int64)
    log.info("taking %d %s features from the run's feature cache %s", len(keys), kind, path)
    if kind == "products":
        return np.asarray(cache.array("product_global", "orig")[rows], np.float32), np.zeros(0)
    g = np.asarray(cache.array("scene_global", "orig")[rows], np.float32)
    return g, np.asarray(cache.array("scene_regions", "orig")[rows], np.float32)


def _crop_key(scene: str, box: Sequence[int]) -> str:
    return f"{scene}:{','.join(str(int(v)) for v in box)}"


def _digest(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_features(
    path: Path, produce: Callable[[], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Backbone features from ``path`` (.npz) if present, else produced and stored atomically."""
    if path.is_file():
        log.info("using cached backbone features %s", path)
        with np.load(path) as z:
            return z["g"].astype(np.float32), z["regions"].astype(np.float32)
    g, r = produce()
    with atomic_path(path) as tmp:
        np.savez(tmp, g=g.astype(np.float16), regions=r.astype(np.float16))
    return g, r


def apply_heads(model: CTLModel, g: np.ndarray, regions: np.ndarray, scenes: bool) -> Embedded:
    """Head embeddings of backbone features, in batches (attention_all is (B, C, R, D) inside)."""
    parts: dict[str, list[np.ndarray]] = {"emb": [], "queries": [], "attention": []}
    with torch.no_grad():
        for start in range(0, len(g), EMBED_CHUNK):
            gb = torch.from_numpy(np.ascontiguousarray(g[start : start + EMBED_CHUNK]))
            if not scenes:
                parts["emb"].append(model.product_embedding(gb).numpy())
                continue
            rb = torch.from_numpy(np.ascontiguousarray(regions[start : start + EMBED_CHUNK]))
            f_s, f_i, keys = model.scene_embeddings(gb, rb)
            att = model.attention_all(keys)
            parts["emb"].append(f_s.numpy())
            parts["queries"].append(model.query_vector(f_s, f_i, att).numpy())
            parts["attention"].append(att.numpy())
    out = {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in parts.items()}
    return Embedded(g, out["emb"], out["queries"], out["attention"])


def embed_all(
    config: dict[str, Any],
    backbone: Backbone,
    model: CTLModel,
    data: STLData,
    catalog: list[str],
    crops: list[Crop],
    cache: Path,
    opts: Options,
) -> tuple[Embedded, Embedded]:
    """Products and scene crops through the backbone (cached) and the heads."""
    root, bs = str(data.root.resolve()), opts.batch_size

    def features(
        kind: str, keys: list[str], produce: Callable[[], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        path = cache / f"{kind}-{_digest(backbone.key(), root, keys)}.npz"
        return cached_features(
            path, lambda: from_training_cache(config, backbone, data, kind, keys) or produce()
        )

    product_features = features(
        "products",
        catalog,
        lambda: compute(lambda s: rgb(data.product_path(s)), catalog, backbone, bs, False),
    )
    scene_features = features(
        "scenes",
        [_crop_key(c.scene, c.box) for c in crops],
        lambda: compute(lambda c: load_crop(data, c), crops, backbone, bs, True),
    )
    return (
        apply_heads(model, *product_features, scenes=False),
        apply_heads(model, *scene_features, scenes=True),
    )


# --- ranking ---


def group_by_category(
    pairs: Sequence[EvalPair],
    categories: Sequence[str],
    catalog_categories: np.ndarray,
    catalog_row: dict[str, int],
    scene_products: dict[str, set[str]],
) -> dict[str, CategoryPairs]:
    """Per category: its pairs, its catalog products, the positives' columns and exclusions."""
    out: dict[str, CategoryPairs] = {}
    for c, name in enumerate(categories):
        rows = np.array([i for i, p in enumerate(pairs) if p.category == name], np.int64)
        if rows.size == 0:
            continue
        products = np.flatnonzero(catalog_categories == name)
        col = {int(r): j for j, r in enumerate(products)}
        exclude = np.zeros((rows.size, products.size), bool)
        for i, r in enumerate(rows):
            p = pairs[r]
            for other in scene_products.get(p.pair.scene, set()) - {p.pair.product}:
                j = col.get(catalog_row.get(other, -1))
                if j is not None:
                    exclude[i, j] = True
        ok = products.size - 1 - exclude.sum(1) > 0
        if not ok.all():
            log.warning("%s: %d pairs without any negative left out", name, int((~ok).sum()))
            rows, exclude = rows[ok], exclude[ok]
        if rows.size == 0:
            continue
        out[name] = CategoryPairs(
            c,
            rows,
            np.array([pairs[r].crop for r in rows], np.int64),
            products,
            np.array([col[pairs[r].product] for r in rows], np.int64),
            exclude,
        )
    return out


Scorer = Callable[[CategoryPairs], np.ndarray]


def scorers(scenes: Embedded, products: Embedded, popularity: np.ndarray) -> dict[str, Scorer]:
    """Distance matrices (n pairs, m products; lower = better) of the model and each baseline."""

    def model(g: CategoryPairs) -> np.ndarray:
        q = scenes.queries[g.crops, g.cat_idx].astype(np.float64)
        return 2.0 - q @ products.emb[g.products].T.astype(np.float64)

    def global_only(g: CategoryPairs) -> np.ndarray:
        f_s = scenes.emb[g.crops].astype(np.float64)
        return 2.0 - 2.0 * f_s @ products.emb[g.products].T.astype(np.float64)

    def imagenet(g: CategoryPairs) -> np.ndarray:
        a = scenes.raw[g.crops].astype(np.float64)
        b = products.raw[g.products].astype(np.float64)
        return (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T

    def by_popularity(g: CategoryPairs) -> np.ndarray:
        return np.broadcast_to(-popularity[g.products], (g.pairs.size, g.products.size))

    def random(g: CategoryPairs) -> np.ndarray:
        return np.zeros((g.pairs.size, g.products.size))

    return {
        "model": model,
        "global_only": global_only,
        "imagenet": imagenet,
        "popularity": by_popularity,
        "random": random,
    }


def rank_all(
    groups: dict[str, CategoryPairs], scorer: Scorer, seed: int, draws: int
) -> M.PairScores:
    blocks = {c: M.RankingBlock.build(scorer(g), g.pos, g.exclude) for c, g in groups.items()}
    return M.score_blocks(blocks, seed, draws)


# --- attention ---


def to_input_frame(box: BBox, width: int, height: int, spec: PreprocessSpec) -> BBox:
    """A box normalized to a ``width`` x ``height`` crop, in the square frame the backbone saw."""
    if spec.resize == "stretch":
        return box
    scale = 1.0 / max(width, height)
    w, h = width * scale, height * scale
    ox, oy = (1.0 - w) / 2, (1.0 - h) / 2
    return (ox + box[0] * w, oy + box[1] * h, ox + box[2] * w, oy + box[3] * h)


def other_boxes(
    crop: Crop, product: str, scene_boxes: dict[str, list[tuple[str, BBox]]]
) -> list[BBox]:
    """The scene's other labelled products, mapped into the crop (those visible in it)."""
    out: list[BBox] = []
    for other, bbox in scene_boxes.get(crop.scene, []):
        if other == product or bbox == crop.bbox:
            continue
        mapped = box_in_crop(bbox, crop.box, crop.width, crop.height)
        if mapped is not None and mapped not in out:
            out.append(mapped)
    return out


# --- the evaluation ---


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def run_evaluation(run_dir: Path, data_dir: Path, cache: Path, opts: Options) -> Evaluation:
    """Crop, embed, rank with every scorer and analyse attention."""
    model, config = load_run(run_dir)
    backbone = build_backbone(config["backbone"], config.get("backbone_weights"))
    categories = model.categories
    data = STLData.load(data_dir)
    run_split: dict[str, str] = _read_json(run_dir / "split.json", {})
    if opts.split != "all" and not run_split:
        raise EvaluationError(f"{run_dir / 'split.json'} is missing: use --split all")
    counts: dict[str, int] = _read_json(run_dir / "popularity.json", {})
    if not counts:
        log.warning("%s has no popularity.json: the popularity baseline is random", run_dir)

    pairs = select_pairs(data, categories, opts.split, run_split)
    crops, crop_rows, crop_stats = crop_pairs(data, pairs)
    catalog = [s for s in data.available_products() if data.categories[s] in set(categories)]
    catalog_row = {s: i for i, s in enumerate(catalog)}
    eval_pairs = [
        EvalPair(p, row, catalog_row[p.product], data.categories[p.product])
        for p, row in zip(pairs, crop_rows, strict=True)
        if row is not None
    ]
    if not eval_pairs:
        raise EvaluationError("every pair was dropped by the crop rules")
    log.info(
        "split %s: %d pairs (%d crops) vs %d products; crops %s",
        opts.split,
        len(eval_pairs),
        len(crops),
        len(catalog),
        crop_stats.as_dict(),
    )

    t0 = time.monotonic()
    products, scenes = embed_all(config, backbone, model, data, catalog, crops, cache, opts)
    t1 = time.monotonic()

    scene_boxes: dict[str, list[tuple[str, BBox]]] = {}
    for p in data.pairs:
        scene_boxes.setdefault(p.scene, []).append((p.product, p.bbox))
    scene_products = {s: {prod for prod, _ in v} for s, v in scene_boxes.items()}
    cats = np.array([data.categories[s] for s in catalog], dtype=object)
    groups = group_by_category(eval_pairs, categories, cats, catalog_row, scene_products)
    popularity = np.array([float(counts.get(s, 0)) for s in catalog])
    ranked = {
        name: rank_all(groups, fn, opts.seed, opts.draws)
        for name, fn in scorers(scenes, products, popularity).items()
    }
    t2 = time.monotonic()
    log.info("ranked %d pairs with %d scorers in %.2f s", len(eval_pairs), len(ranked), t2 - t1)

    cat_index = {c: i for i, c in enumerate(categories)}
    attention = np.stack([scenes.attention[p.crop, cat_index[p.category]] for p in eval_pairs])
    boxes = [other_boxes(crops[p.crop], p.pair.product, scene_boxes) for p in eval_pairs]
    relevant = np.stack(
        [
            M.region_relevance(
                [to_input_frame(b, *crops[p.crop].size, backbone.spec) for b in bs], backbone.grid
            )
            for p, bs in zip(eval_pairs, boxes, strict=True)
        ]
    )
    seconds = {"embed": round(t1 - t0, 2), "rank": round(t2 - t1, 2)}
    run_splits = Counter(run_split.get(p.pair.scene, "unseen") for p in eval_pairs)
    return Evaluation(
        data, run_dir, backbone, eval_pairs, crops, crop_stats, catalog, groups, scenes,
        products, ranked, attention, relevant, boxes, dict(sorted(run_splits.items())), seconds,
    )  # fmt: skip


def metrics_of(ev: Evaluation, opts: Options) -> dict[str, Any]:
    """``metrics.json``: the model's metrics, the baselines' and the attention analysis."""
    summaries = {n: M.summarize(s, opts.seed, M.KS, opts.n_boot) for n, s in ev.ranked.items()}
    model = summaries["model"]
    return {
        "n_pairs": model["n_pairs"],
        "n_products": len(ev.catalog),
        **{k: v for k, v in model.items() if k != "n_pairs"},
        "baselines": {name: summaries[name] for name in BASELINES},
        "attention": M.attention_summary(ev.attention, ev.relevant),
        "split": opts.split,
        "seed": opts.seed,
        "draws": opts.draws,
        "run": str(ev.run_dir),
        "data": str(ev.data.root),
        "backbone": ev.backbone.name,
        "n_crops": len(ev.crops),
        "pairs_by_run_split": ev.run_splits,
        "crops": ev.crop_stats.as_dict(),
        "seconds": dict(ev.seconds),
    }


# --- pictures ---


def _sample(rng: np.random.Generator, pool: np.ndarray, k: int) -> np.ndarray:
    return np.sort(rng.choice(pool, min(k, pool.size), replace=False))


def _attention_picture(ev: Evaluation, rng: np.random.Generator, opts: Options, path: Path) -> Path:
    with_boxes = np.flatnonzero(ev.relevant.any(1))
    pool = with_boxes if with_boxes.size >= opts.samples else np.arange(len(ev.pairs))
    samples = []
    for i in _sample(rng, pool, opts.samples):
        p = ev.pairs[i]
        if not ev.relevant[i].any():
            verdict = "no other product in the crop"
        elif ev.relevant[i, int(np.argmax(ev.attention[i]))]:
            verdict = "top region on a product"
        else:
            verdict = "top region off products"
        samples.append(
            plots.AttentionSample(
                load_crop(ev.data, ev.crops[p.crop]),
                ev.attention[i],
                ev.boxes[i],
                f"{p.category}: {verdict}",
            )
        )
    return plots.attention_heatmaps(samples, ev.backbone.grid, path)


def _thumb(ev: Evaluation, product_row: int, d: float) -> plots.Thumb:
    return plots.Thumb(rgb(ev.data.product_path(ev.catalog[product_row])), f"d*={d:.3f}")


def _compatibility_picture(
    ev: Evaluation, rng: np.random.Generator, opts: Options, path: Path
) -> Path:
    rows = []
    ranked = np.sort(np.concatenate([g.pairs for g in ev.groups.values()]))
    for i in _sample(rng, ranked, opts.compat_rows):
        g, k, d = ev.model_distances(int(i))
        order = np.argsort(d, kind="stable")
        pos = int(g.pos[k])
        rank = int(np.flatnonzero(order == pos)[0]) + 1
        truth = _thumb(ev, int(g.products[pos]), d[pos])
        p = ev.pairs[int(i)]
        rows.append(
            plots.CompatibilityRow(
                load_crop(ev.data, ev.crops[p.crop]),
                p.category,
                plots.Thumb(truth.image, f"rank {rank} of {g.products.size}\n{truth.caption}"),
                [_thumb(ev, int(g.products[j]), d[j]) for j in order[:3]],
                [_thumb(ev, int(g.products[j]), d[j]) for j in order[::-1][:3]],
            )
        )
    return plots.compatibility(rows, path)


def _tsne_picture(ev: Evaluation, rng: np.random.Generator, opts: Options, path: Path) -> Path:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    crop_category: dict[int, str] = {}
    for p in ev.pairs:
        crop_category.setdefault(p.crop, p.category)
    crop_rows = _sample(rng, np.array(sorted(crop_category), np.int64), opts.tsne_scenes)
    prod_rows = _sample(rng, np.arange(len(ev.catalog)), opts.tsne_products)
    x = np.concatenate([ev.products.emb[prod_rows], ev.scenes.emb[crop_rows]]).astype(np.float64)
    cats = [ev.data.categories[ev.catalog[i]] for i in prod_rows]
    cats += [crop_category[int(r)] for r in crop_rows]
    is_scene = np.r_[np.zeros(prod_rows.size, bool), np.ones(crop_rows.size, bool)]
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=opts.seed)
    with threadpool_limits(1):  # one thread: deterministic, and far faster on a busy machine
        points = tsne.fit_transform(x)
    return plots.tsne(points, cats, is_scene, path)


def draw_pictures(
    ev: Evaluation, metrics: dict[str, Any], opts: Options, out_dir: Path
) -> list[Picture]:
    """Every PNG of the evaluation, with one sentence each for the report."""
    rng = np.random.default_rng(opts.seed)
    names = ["model", *BASELINES[::-1]]
    curves = {n: ev.ranked[n].topk_curve(CURVE_KS) for n in names}
    summaries = {"model": metrics, **metrics["baselines"]}
    counts = {c: m["n"] for c, m in metrics["per_category"].items()}
    auc_table = {
        c: {n: summaries[n]["per_category"][c]["auc"] for n in names}
        for c in metrics["per_category"]
    }
    return [
        Picture(
            plots.topk_curves(curves, CURVE_KS, len(ev.pairs), out_dir / "topk_accuracy.png").name,
            "Top-k accuracy",
            "share of test pairs whose true product is among the k closest products of its "
            "category, for the model and each baseline (the paper's Fig. 5)",
        ),
        Picture(
            plots.per_category_auc(auc_table, counts, out_dir / "auc_per_category.png").name,
            "AUC per category",
            "binary-choice AUC of the model and each baseline in each category",
        ),
        Picture(
            _attention_picture(ev, rng, opts, out_dir / "attention.png").name,
            "Attention",
            "the attention of the pair's category over sample cropped scenes, with the other "
            "labelled products of each scene outlined",
        ),
        Picture(
            _compatibility_picture(ev, rng, opts, out_dir / "compatibility.png").name,
            "Most and least compatible products",
            "for sample scenes, the true product, then the 3 products of its category with the "
            "smallest d* and the 3 with the largest (the paper's Fig. 7)",
        ),
        Picture(
            _tsne_picture(ev, rng, opts, out_dir / "tsne.png").name,
            "t-SNE of the embeddings",
            "scene and product embeddings in two dimensions, coloured by category",
        ),
    ]


def evaluate(run_dir: Path, data_dir: Path, out_dir: Path, opts: Options) -> dict[str, Any]:
    """Evaluate a run on a data directory: writes metrics.json, the PNGs and report.md."""
    t0 = time.monotonic()
    ev = run_evaluation(run_dir, data_dir, out_dir / "cache", opts)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = metrics_of(ev, opts)
    pictures = draw_pictures(ev, metrics, opts, out_dir)
    metrics["seconds"]["total"] = round(time.monotonic() - t0, 2)
    run_metrics = _read_json(run_dir / "metrics.json", {})
    # Held-out outfits (FITB, composed-scene attention) are measured by training on its split.
    metrics["outfits"] = run_metrics.get("outfits") or {}
    write_json(out_dir / "metrics.json", metrics)
    write_report(out_dir / "report.md", metrics, run_metrics, SCORER_NOTES, pictures)
    return metrics


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    s = Settings()
    ap = argparse.ArgumentParser(prog="ctl evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run directory of 'ctl train'")
    ap.add_argument("--data", type=Path, default=s.data_dir, help="STL data directory")
    ap.add_argument("--out", type=Path, required=True, help="for metrics.json, report.md, PNGs")
    ap.add_argument("--split", choices=SPLITS, default="all", help="all: every pair is a test")
    ap.add_argument("--seed", type=int, default=s.seed, help="negatives, bootstrap, samples")
    ap.add_argument("--draws", type=int, default=10, help="negative draws for AUC and MRR@10")
    ap.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% CIs")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8, help="scenes in the attention picture")
    args = ap.parse_args(list(argv))
    for name in ("draws", "bootstrap", "batch_size", "samples"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    """``ctl evaluate``: prints the headline numbers; writes OUT_DIR/metrics.json and report.md."""
    args = parse_args(argv)
    opts = Options(args.split, args.seed, args.draws, args.bootstrap, args.batch_size, args.samples)
    try:
        m = evaluate(args.run, args.data, args.out, opts)
    except (EvaluationError, BackboneError, FileNotFoundError) as exc:
        log.error("ctl evaluate: %s", exc)
        return 1
    att = m["attention"]
    print(
        f"{m['n_pairs']} pairs vs {m['n_products']} products: AUC {m['auc']:.3f} "
        f"[{m['auc_ci95'][0]:.3f}, {m['auc_ci95'][1]:.3f}], MRR {m['mrr']:.3f}, "
        f"MRR@10 {m['mrr_10']:.3f}, top-10 {m['top_k_accuracy']['10']:.3f}; attention top-1 "
        f"{att['top1_hit']:.3f} (random {att['random_top1_hit']:.3f}); report in {args.out}"
    )
    return 0
