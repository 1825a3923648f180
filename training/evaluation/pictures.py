"""The PNGs of an evaluation (sample scenes, curves, t-SNE), each with its report sentence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training import plots
from training.evaluation.baselines import BASELINES
from training.evaluation.pairs import load_crop
from training.evaluation.report import Picture
from training.evaluation.run import PRIOR, Evaluation, Options
from training.stl import rgb

CURVE_KS = tuple(range(1, 101))


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
    names = ["model", PRIOR, *BASELINES[::-1]]
    curves = {n: ev.ranked[n].topk_curve(CURVE_KS) for n in names}
    summaries = {"model": metrics, PRIOR: metrics["prior"], **metrics["baselines"]}
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
