"""One evaluation of a run: crop, embed, rank with the model and every baseline, analyse
attention; ``metrics_of`` reads ``metrics.json`` off it."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from index.prior import PopularityPrior
from model.backbones import Backbone, build_backbone
from model.ctl import load_run
from runtime import options
from runtime.encoder import OnnxEncoder
from runtime.options import option
from training import metrics as M
from training.config import TrainingSettings
from training.crop import CropStats
from training.evaluation import attention, baselines
from training.evaluation.pairs import (
    SPLITS,
    CategoryPairs,
    Crop,
    EvalPair,
    EvaluationError,
    crop_pairs,
    group_by_category,
    select_pairs,
)
from training.evaluation.scoring import (
    Embedded,
    embed_all,
    embed_onnx,
    member_scorer,
    model_scorer,
    rank_all,
    with_prior,
)
from training.stl import BBox, STLData

log = logging.getLogger(__name__)

PRIOR = "model+prior"
SCORER_NOTES = {
    "model": "the trained CTL model (the mean of its members' d* when an ensemble): "
    "d* = (d_global + d_local) / 2",
    PRIOR: "the model ranked as the service ranks: d* - lambda log(1 + training pairs)",
    "member_k": "member k of the ensemble alone",
    **baselines.NOTES,
}


class Options(options.Options, settings=TrainingSettings):
    """Knobs of one evaluation, the flags of ``ctl evaluate`` (training/evaluate.py)."""

    split: str = option("all", "all: every pair is a test", choices=SPLITS)
    seed: int = option(help="negatives, bootstrap, samples", setting="seed")
    draws: int = option(10, "negative draws for AUC and MRR@10", ge=1)
    n_boot: int = option(1000, "resamples for the 95% CIs", flag="--bootstrap", ge=1)
    batch_size: int = option(32, "images per backbone or encoder call", ge=1)
    samples: int = option(8, "scenes in the attention picture", ge=1)
    prior_weight: float | None = option(
        None, "lambda of the popularity prior for the model+prior ranking (default: the run's)"
    )
    artifacts: Path | None = option(
        None, "rank through these exported encoders (ONNX Runtime) instead of torch"
    )
    compat_rows: ClassVar[int] = 4
    tsne_products: ClassVar[int] = 1000
    tsne_scenes: ClassVar[int] = 300


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
    ranked: dict[str, M.PairScores]  # "model", PRIOR, "member_k", then the baselines
    prior_weight: float
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


def read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def run_evaluation(run_dir: Path, data_dir: Path, cache: Path, opts: Options) -> Evaluation:
    """Crop, embed, rank with every scorer and analyse attention."""
    model, config = load_run(run_dir)
    backbone = build_backbone(config["backbone"], config.get("backbone_weights"))
    categories = model.categories
    data = STLData.load(data_dir)
    run_split: dict[str, str] = read_json(run_dir / "split.json", {})
    if opts.split != "all" and not run_split:
        raise EvaluationError(f"{run_dir / 'split.json'} is missing: use --split all")
    counts: dict[str, int] = read_json(run_dir / "popularity.json", {})
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
    products, scenes = embed_all(
        config, backbone, model, data, catalog, crops, cache, opts.batch_size
    )
    if opts.artifacts is not None:
        encoder = OnnxEncoder.from_artifacts(opts.artifacts, device="cpu")
        if encoder.categories != list(categories):
            raise EvaluationError(
                f"{opts.artifacts} serves the categories {encoder.categories}, the run has "
                f"{list(categories)}: export this run first"
            )
        log.info("ranking through the exported encoders %s", encoder.version)
        products, scenes = embed_onnx(
            encoder, data, catalog, crops, products, scenes, opts.batch_size
        )
    t1 = time.monotonic()

    scene_boxes: dict[str, list[tuple[str, BBox]]] = {}
    for p in data.pairs:
        scene_boxes.setdefault(p.scene, []).append((p.product, p.bbox))
    scene_products = {s: {prod for prod, _ in v} for s, v in scene_boxes.items()}
    cats = np.array([data.categories[s] for s in catalog], dtype=object)
    groups = group_by_category(eval_pairs, categories, cats, catalog_row, scene_products)
    popularity = np.array([float(counts.get(s, 0)) for s in catalog])
    weight = opts.prior_weight
    if weight is None:
        weight = float(config.get("train", {}).get("prior_weight", 0.0))
    scorers = {"model": model_scorer(scenes, products)}
    scorers[PRIOR] = with_prior(scorers["model"], PopularityPrior(weight, counts).bonus(catalog))
    if model.members > 1:
        scorers |= {
            f"member_{k}": member_scorer(scenes, products, model, k) for k in range(model.members)
        }
    scorers |= baselines.scorers(scenes, products, popularity)
    ranked = {name: rank_all(groups, fn, opts.seed, opts.draws) for name, fn in scorers.items()}
    t2 = time.monotonic()
    log.info("ranked %d pairs with %d scorers in %.2f s", len(eval_pairs), len(ranked), t2 - t1)

    att, relevant, boxes = attention.analyse(
        eval_pairs, crops, scenes, categories, scene_boxes, backbone.spec, backbone.grid
    )
    seconds = {"embed": round(t1 - t0, 2), "rank": round(t2 - t1, 2)}
    run_splits = Counter(run_split.get(p.pair.scene, "unseen") for p in eval_pairs)
    return Evaluation(
        data, run_dir, backbone, eval_pairs, crops, crop_stats, catalog, groups, scenes,
        products, ranked, weight, att, relevant, boxes, dict(sorted(run_splits.items())), seconds,
    )  # fmt: skip


def metrics_of(ev: Evaluation, opts: Options) -> dict[str, Any]:
    """``metrics.json``: the model's metrics, the baselines' and the attention analysis."""
    summaries = {n: M.summarize(s, opts.seed, M.KS, opts.n_boot) for n, s in ev.ranked.items()}
    model = summaries["model"]
    return {
        "n_pairs": model["n_pairs"],
        "n_products": len(ev.catalog),
        **{k: v for k, v in model.items() if k != "n_pairs"},
        "prior": {"weight": ev.prior_weight, **summaries[PRIOR]},
        "members": {n: s for n, s in summaries.items() if n.startswith("member_")},
        "baselines": {name: summaries[name] for name in baselines.BASELINES},
        "attention": M.attention_summary(ev.attention, ev.relevant),
        "split": opts.split,
        "seed": opts.seed,
        "draws": opts.draws,
        "run": str(ev.run_dir),
        "data": str(ev.data.root),
        "backbone": ev.backbone.name,
        "encoders": str(opts.artifacts) if opts.artifacts else "torch",
        "n_crops": len(ev.crops),
        "pairs_by_run_split": ev.run_splits,
        "crops": ev.crop_stats.as_dict(),
        "seconds": dict(ev.seconds),
    }
