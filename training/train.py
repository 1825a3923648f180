"""``ctl train``: the CTL heads on cached frozen-backbone features.

Adam, triplet loss with margin 0.2 on d*, same-category negatives drawn afresh every epoch
(optionally the hardest valid one in the batch), an optional in-batch softmax contrastive term
(``training.loss.CTLLoss``); the category attention told to look at the scene's other
labelled products (``attention_nll``, on by default). ``--members N``
trains an ensemble of N models as one (``model.ctl.CTLModel``): each member draws its own
triplets from its own stream, and one gather and one batched pass of the heads serve all of
them. The scene-level val split is evaluated every N epochs by the ensemble's AUC
(= binary-choice accuracy, computed exactly against every valid same-category catalog
product). Keeps the best checkpoint, resumes from ``last.pt``. Everything later steps need lands
in the run directory. ``run`` orchestrates ``train_one_epoch`` and ``evaluate``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.ctl import CTLModel
from runtime.atomic import atomic_path, write_json
from runtime.options import option
from runtime.progress import Progress
from training import crop
from training import metrics as M
from training.features import FeatureCache, FeatureOptions, load_cache
from training.loss import NEGATIVES, CTLLoss, attention_nll
from training.sampling import Example, TripletSampler
from training.split import UNUSED, keep_train_fraction, split_scenes
from training.stl import BBox, STLData

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = 20
"""``--epochs``: the supervised-attention ensembles' best val AUC came by epoch 10-20
(docs/default-model-results.md)."""
DEFAULT_MEMBERS = 3
"""``--members``: chosen on val with paired seeds (docs/default-model-results.md)."""
DEFAULT_STL_ATTENTION = 1.0
"""``--stl-attention``: no cost in val AUC or top-10 beyond the seed spread, and the heatmap
follows the garments (docs/default-model-results.md)."""
DEFAULT_PRIOR_WEIGHT = 0.3
"""``--prior-weight``: lambda chosen on val for top-10 at no AUC loss
(docs/default-model-results.md)."""


class TrainOptions(FeatureOptions, prog="ctl train"):
    out: Path = option(help="run directory")
    epochs: int = option(
        DEFAULT_EPOCHS,
        "the best val checkpoint is kept; supervised-attention ensembles peak by 10-20",
        ge=1,
    )
    seed: int = option(help="seed of the split and the triplet sampling", setting="seed")
    resume: bool = option(False, "continue from RUN_DIR/last.pt")
    init_seed: int | None = option(
        None,
        "seed of initialization and dropout (default --seed; the split and sampling stay on "
        "--seed): another model on the same split, e.g. an ensemble's control",
    )
    batch_size: int = option(128, "triplets per optimizer step", ge=2)
    lr: float = option(1e-3, "Adam's learning rate")
    weight_decay: float = option(1e-4, "Adam's weight decay")
    margin: float = option(0.2, "triplet loss margin")
    dim: int = option(help="embedding dimension of each member", setting="embedding_dim")
    hidden: int = option(256, "hidden units of the heads")
    dropout: float = option(0.5, "dropout of the heads")
    input_dropout: float = option(0.0, "dropout of the backbone features")
    negatives: str = option("random", "negatives of the triplets", choices=NEGATIVES)
    contrastive: float = option(0.0, "weight of in-batch softmax loss")
    temperature: float = option(0.1, "temperature of the in-batch softmax loss")
    eval_every: int = option(5, "epochs between val evaluations", ge=1)
    members: int = option(
        DEFAULT_MEMBERS,
        "models in the ensemble, trained as one (each its own initialization and triplet "
        "stream); the exported embeddings are members x --dim wide",
        ge=1,
    )
    stl_attention: float = option(
        DEFAULT_STL_ATTENTION,
        "weight of attention supervision on STL crops by the scene's other labelled "
        "products' boxes; 0: off",
    )
    prior_weight: float = option(
        DEFAULT_PRIOR_WEIGHT,
        "lambda of the popularity prior the run ranks with (d* - lambda log(1 + training "
        "pairs)): recorded in the run for ctl evaluate and ctl export; 0: off",
        ge=0,
    )
    standardize: bool = option(True, "z-score backbone features with training statistics")
    train_fraction: float = option(
        1.0,
        "keep this fraction of the training scenes, drawn with --init-seed (default "
        "--seed); val and test unchanged (bench/learning_curve.py)",
        gt=0,
        le=1,
    )

    @property
    def model_seed(self) -> int:
        """The seed of initialization, dropout and the ``--train-fraction`` subset (the split and
        sampling stay on ``seed``)."""
        return self.seed if self.init_seed is None else self.init_seed


@dataclass
class Tensors:
    """The cached features as float32 tensors, views stacked first: (V, N, ...)."""

    scene_global: torch.Tensor
    scene_regions: torch.Tensor
    product_global: torch.Tensor

    @classmethod
    def load(cls, cache: FeatureCache, views: list[str]) -> Tensors:
        """The arrays every run needs."""

        def stack(kind: str) -> torch.Tensor:
            return torch.from_numpy(
                np.stack([cache.array(kind, v) for v in views]).astype(np.float32)
            )

        return cls(*(stack(k) for k in ("scene_global", "scene_regions", "product_global")))


@dataclass
class Dataset:
    """CTL examples split by scene, with everything the sampler and the evaluation need."""

    categories: list[str]
    products: list[str]
    product_cat: np.ndarray  # (P,) category index
    split: dict[str, str]
    examples: dict[str, list[Example]]  # split -> examples
    scene_products: dict[str, set[int]]
    scene_of_row: list[str]  # the scene of each crop row of the cache
    # (crop row, product row) -> the crop's regions covered by the scene's other labelled
    # products (training split, only where there are some; see ``add_attention_targets``)
    attention_targets: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        cache: FeatureCache,
        data: STLData,
        seed: int,
        train_fraction: float = 1.0,
        fraction_seed: int = 0,
    ) -> Dataset:
        products = cache.products
        categories = sorted(set(cache.product_categories))
        cat_idx = {c: i for i, c in enumerate(categories)}
        row = {p: i for i, p in enumerate(products)}
        product_cat = np.array([cat_idx[c] for c in cache.product_categories], np.int64)
        scene_products: dict[str, set[int]] = {}
        for pair in data.pairs:  # every product labelled in the scene, whatever its split
            if pair.product in row:
                scene_products.setdefault(pair.scene, set()).add(row[pair.product])
        raw = cache.examples
        split = split_scenes((e["scene"] for e in raw), seed=seed)
        split = keep_train_fraction(split, train_fraction, fraction_seed)
        examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        scene_of_row = [""] * len(cache.meta["crops"])
        for e in raw:
            scene_of_row[e["crop"]] = e["scene"]
            if split[e["scene"]] == UNUSED:
                continue
            ex = Example(e["crop"], e["scene"], row[e["product"]], cat_idx[e["category"]])
            examples[split[e["scene"]]].append(ex)
        return cls(categories, products, product_cat, split, examples, scene_products, scene_of_row)

    def add_attention_targets(self, cache: FeatureCache, data: STLData) -> None:
        """Where the attention of each training crop should look: the regions the scene's other
        labelled products cover, in the frame the backbone saw (``ctl evaluate`` measures its
        attention hits on the same boxes, on other scenes)."""
        backbone = cache.meta["backbone"]
        boxes: dict[str, list[tuple[str, BBox]]] = {}
        for pair in data.pairs:
            boxes.setdefault(pair.scene, []).append((pair.product, pair.bbox))
        sizes, product_row = crop.PairCrops(data), {p: i for i, p in enumerate(self.products)}
        for e in cache.examples:
            row, product = e["crop"], product_row[e["product"]]
            size = sizes.size(e["scene"])
            if self.split[e["scene"]] != "train" or size is None:
                continue
            scene, box = cache.meta["crops"][row]
            own = tuple(e["bbox"])
            others = (b for p, b in boxes[scene] if p != e["product"] and tuple(b) != own)
            cw, ch = box[2] - box[0], box[3] - box[1]
            framed = [
                crop.to_input_frame(b, cw, ch, backbone["spec"]["resize"])
                for b in crop.boxes_in_crop(others, tuple(box), *size)
            ]
            relevant = M.region_relevance(framed, backbone["grid"])
            if relevant.any():
                self.attention_targets[row, product] = relevant

    def attention_target(self, rows: np.ndarray) -> torch.Tensor:
        """(B, R) targets of ``[crop row, positive, ...]`` rows; all False where unknown."""
        n_regions = next(iter(self.attention_targets.values())).shape[0]
        blank = np.zeros(n_regions, bool)
        return torch.from_numpy(
            np.stack([self.attention_targets.get((int(r), int(p)), blank) for r, p in rows[:, :2]])
        )

    @functools.cached_property
    def paired_codes(self) -> np.ndarray:
        """Sorted ``crop row * P + product row`` of every product labelled in each crop's
        scene (``exclusion_mask``'s lookup)."""
        codes = [
            row * len(self.products) + p
            for row, scene in enumerate(self.scene_of_row)
            for p in self.scene_products.get(scene, ())
        ]
        return np.unique(np.array(codes, np.int64))


@dataclass
class Streams:
    """The run's random streams, saved in ``last.pt`` so that a resumed run continues them:
    each member's STL triplets (``rngs``; member 0's is the single model's), views (``gen``)
    and torch's global stream (dropout)."""

    rngs: list[np.random.Generator]
    gen: torch.Generator

    @classmethod
    def seeded(cls, seed: int, model_seed: int, members: int = 1) -> Streams:
        torch.manual_seed(model_seed)  # the dropout stream, independent of the model's size
        gen = torch.Generator().manual_seed(seed)
        rngs = [np.random.default_rng(seed if k == 0 else [seed, 100 + k]) for k in range(members)]
        return cls(rngs, gen)

    def state(self) -> dict[str, Any]:
        return {
            "rngs": [r.bit_generator.state for r in self.rngs],
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load(self, state: dict[str, Any]) -> None:
        for rng, saved in zip(self.rngs, state["rngs"], strict=True):
            rng.bit_generator.state = saved
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])


def exclusion_mask(batch: np.ndarray, ds: Dataset) -> torch.Tensor:
    """(B, 2B): candidate product j (positives then negatives) is paired with scene i."""
    cand = np.concatenate([batch[:, 1], batch[:, 2]])
    codes = batch[:, :1] * len(ds.products) + cand[None, :]
    return torch.from_numpy(np.isin(codes, ds.paired_codes))


def embed_triplets(
    model: CTLModel, t: Tensors, batch: np.ndarray, cats: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's q (d*(s, x) = 2 - <q, f_x>), f_pos, f_neg (M, B, D) and the attention of
    the positive's category over the scene's regions (M, B, R), of its own
    ``[scene_row, positive, negative]`` rows ``batch`` (M, B, 3); each image in an independently
    drawn view, gathered for every member at once."""
    n_views = t.scene_global.shape[0]
    v = torch.randint(n_views, (3, *batch.shape[:2]), generator=gen)
    s, p, n = (torch.from_numpy(batch[..., k]) for k in range(3))
    f_s, f_i, keys = model.member_scenes(t.scene_global[v[0], s], t.scene_regions[v[0], s])
    att = model.attention(keys, cats)
    q = model.query_vector(f_s, f_i, att)
    f_pos = model.member_products(t.product_global[v[1], p])
    f_neg = model.member_products(t.product_global[v[2], n])
    return q, f_pos, f_neg, att


def train_step(
    model: CTLModel,
    opt: torch.optim.Optimizer,
    loss_fn: CTLLoss,
    t: Tensors,
    batch: np.ndarray,
    gen: torch.Generator,
    ds: Dataset,
    cache_rows: np.ndarray | None = None,
    attention_weight: float = 0.0,
) -> float:
    """One optimizer step on ``batch`` (M, B, 3): member k's loss on its own rows, summed over
    the members (so each member's heads get the gradient they would alone); ``cache_rows``: the
    same triplets as rows of the feature cache when ``t`` holds freshly computed features
    instead (the end-to-end benchmark); ``attention_weight``: of ``attention_nll`` on the
    dataset's attention targets. Returns the loss per member."""
    rows = batch if cache_rows is None else cache_rows
    cats = torch.from_numpy(ds.product_cat[rows[..., 1]])
    q, f_pos, f_neg, att = embed_triplets(model, t, batch, cats, gen)
    loss = q.new_zeros(())
    for k in range(len(rows)):
        loss = loss + loss_fn(q[k], f_pos[k], f_neg[k], cats[k], exclusion_mask(rows[k], ds))
        if attention_weight > 0 and ds.attention_targets:
            loss = loss + attention_weight * attention_nll(att[k], ds.attention_target(rows[k]))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.item()) / len(rows)


def train_one_epoch(
    model: CTLModel,
    opt: torch.optim.Optimizer,
    loss_fn: CTLLoss,
    t: Tensors,
    ds: Dataset,
    sampler: TripletSampler,
    streams: Streams,
    batch_size: int,
    attention_weight: float = 0.0,
) -> float:
    """One pass over a fresh draw of training triplets, each member's from its own stream;
    returns the mean loss."""
    model.train()
    triplets = np.stack([sampler.epoch(rng) for rng in streams.rngs])  # (M, E, 3)
    losses = []
    for i in range(0, triplets.shape[1], batch_size):
        batch = triplets[:, i : i + batch_size]
        if batch.shape[1] < 2:
            continue
        losses.append(
            train_step(
                model, opt, loss_fn, t, batch, streams.gen, ds,
                attention_weight=attention_weight,
            )
        )  # fmt: skip
    return float(np.mean(losses)) if losses else 0.0


@torch.no_grad()
def evaluate(model: CTLModel, t: Tensors, sampler: TripletSampler) -> float:
    """Mean over the sampler's pairs of P(d*(s, neg) > d*(s, pos)) over every valid negative
    (ties count 1/2); 0.5 without pairs."""
    examples = sampler.examples
    if not examples:
        return 0.5
    model.eval()
    f_p = model.product_embedding(t.product_global[0])
    rows = torch.tensor([e.row for e in examples])
    cats = torch.tensor([e.category for e in examples])
    f_s, f_i, keys = model.scene_embeddings(t.scene_global[0, rows], t.scene_regions[0, rows])
    q = model.query_vector(f_s, f_i, model.attention(keys, cats))
    scores = (q @ f_p.T).numpy()  # d* = 2 - score: higher score = closer
    aucs = []
    for i, ex in enumerate(examples):
        neg = scores[i, sampler.candidates(ex)]
        pos = scores[i, ex.product]
        aucs.append(float((neg < pos).mean() + 0.5 * (neg == pos).mean()))
    return float(np.mean(aucs))


def build_model(opts: TrainOptions, t: Tensors, ds: Dataset) -> CTLModel:
    """The heads of ``opts.members`` members, initialized from ``opts.model_seed``,
    standardizing with training statistics."""
    torch.manual_seed(opts.model_seed)  # before the model exists: its initialization is seeded
    model = CTLModel(
        t.scene_global.shape[-1],
        t.scene_regions.shape[-1],
        ds.categories,
        opts.dim,
        opts.hidden,
        opts.dropout,
        opts.input_dropout,
        opts.members,
    )
    if opts.standardize:
        rows = torch.tensor(sorted({e.row for e in ds.examples["train"]}))  # training crops
        model.set_input_stats(
            torch.cat([t.scene_global[:, rows].flatten(0, 1), t.product_global.flatten(0, 1)]),
            t.scene_regions[:, rows].flatten(0, 2),
        )
    return model


@dataclass
class RunState:
    """Where a run stands after an epoch: what ``last.pt`` keeps beside the weights and the
    optimizer, the random streams included (a resumed run continues them)."""

    streams: Streams
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"auc": -1.0, "epoch": 0})
    seconds: float = 0.0

    def save(self, path: Path, model: CTLModel, opt: torch.optim.Optimizer) -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": self.epoch}
        state |= self.streams.state() | {"history": self.history, "best": self.best}
        with atomic_path(path) as tmp:
            torch.save(state | {"seconds": self.seconds}, tmp)

    def resume(self, path: Path, model: CTLModel, opt: torch.optim.Optimizer) -> None:
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        self.streams.load(saved)
        self.epoch, self.history = saved["epoch"], saved["history"]
        self.best, self.seconds = saved["best"], saved["seconds"]
        log.info("resuming after epoch %d (best val AUC %.4f)", self.epoch, self.best["auc"])


def train(opts: TrainOptions) -> dict[str, Any]:
    """Run (or resume) training into ``opts.out``, logging into its ``train.log`` too; returns
    the metrics written there."""
    opts.out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(opts.out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("training")  # this step's and the feature cache's progress
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        return run(opts)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def run(opts: TrainOptions) -> dict[str, Any]:
    """Features, data and model; then epochs of ``train_one_epoch``, ``evaluate`` every
    ``eval_every`` (the best checkpoint kept), ``last.pt`` after each; then ``metrics.json``."""
    out = opts.out
    t0 = time.perf_counter()
    cache, feature_seconds = load_cache(opts)
    seconds = {"features": feature_seconds, "features_wall": time.perf_counter() - t0}
    data = STLData.load(opts.data)
    ds = Dataset.build(cache, data, opts.seed, opts.train_fraction, opts.model_seed)
    if opts.stl_attention > 0:
        ds.add_attention_targets(cache, data)
        log.info("attention targets: %d training crops", len(ds.attention_targets))
    t = Tensors.load(cache, list(opts.views))
    model = build_model(opts, t, ds)
    config = write_run_files(opts, cache, ds, model)
    samplers = {
        k: TripletSampler(v, ds.product_cat, ds.scene_products) for k, v in ds.examples.items()
    }
    log.info(
        "pairs: train %d, val %d, test %d; %d products, %d categories; model %s",
        *(len(samplers[k].examples) for k in ("train", "val", "test")),
        len(ds.products),
        len(ds.categories),
        model.config() | {"categories": len(ds.categories)},
    )
    opt = torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    loss_fn = CTLLoss(opts.margin, opts.negatives, opts.contrastive, opts.temperature)
    streams = Streams.seeded(opts.seed, opts.model_seed, opts.members)
    state = RunState(streams)
    if opts.resume and (out / "last.pt").is_file():
        state.resume(out / "last.pt", model, opt)

    with Progress(log, opts.epochs, "training", "epoch", state.epoch) as progress:
        for epoch in range(state.epoch + 1, opts.epochs + 1):
            t_epoch = time.perf_counter()
            loss = train_one_epoch(
                model, opt, loss_fn, t, ds, samplers["train"], state.streams, opts.batch_size,
                opts.stl_attention,
            )  # fmt: skip
            state.seconds += time.perf_counter() - t_epoch
            record: dict[str, Any] = {"epoch": epoch, "loss": loss}
            if epoch % opts.eval_every == 0 or epoch == opts.epochs:
                record["val_auc"] = auc = evaluate(model, t, samplers["val"])
                if auc > state.best["auc"]:
                    state.best = {"auc": auc, "epoch": epoch}
                    with atomic_path(out / "checkpoint.pt") as tmp:
                        torch.save({"model": model.state_dict(), "config": config}, tmp)
                log.info(
                    "epoch %d loss %.4f val AUC %.4f (best %.4f @ %d)",
                    epoch, loss, auc, state.best["auc"], state.best["epoch"],
                )  # fmt: skip
            else:
                log.info("epoch %d loss %.4f", epoch, loss)
            state.epoch = epoch
            state.history.append(record)
            state.save(out / "last.pt", model, opt)
            progress.update(1)
    metrics = final_metrics(opts, cache, samplers, state, seconds)
    write_json(out / "metrics.json", metrics)
    log.info(
        "best val AUC %.4f at epoch %d; train %.1f s",
        state.best["auc"], state.best["epoch"], state.seconds,
    )  # fmt: skip
    return metrics


def write_run_files(
    opts: TrainOptions, cache: FeatureCache, ds: Dataset, model: CTLModel
) -> dict[str, Any]:
    """``config.json`` (returned: the checkpoints carry it), the split, categories and
    popularity."""
    config = {
        "model": model.config(),
        "backbone": opts.backbone,
        "backbone_weights": str(opts.backbone_weights) if opts.backbone_weights else None,
        "backbone_info": cache.meta["backbone"],
        "data": str(Path(opts.data).resolve()),
        "cache": str(cache.path.resolve()),
        "train": opts.model_dump(mode="json"),
    }
    write_json(opts.out / "config.json", config)
    write_json(opts.out / "split.json", ds.split)
    write_json(opts.out / "categories.json", ds.categories)
    popularity = Counter(ds.products[e.product] for e in ds.examples["train"])
    write_json(opts.out / "popularity.json", dict(popularity.most_common()))
    return config


def final_metrics(
    opts: TrainOptions,
    cache: FeatureCache,
    samplers: dict[str, TripletSampler],
    state: RunState,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """``metrics.json``: the best val AUC, counts and timings."""
    return {
        "best_val_auc": state.best["auc"],
        "best_epoch": state.best["epoch"],
        "epochs": opts.epochs,
        "members": opts.members,
        "backbone": opts.backbone,
        **{f"{k}_pairs": len(samplers[k].examples) for k in ("train", "val", "test")},
        "seconds": {
            "features": round(seconds["features"], 2),
            "features_wall": round(seconds["features_wall"], 2),
            "features_total_cached": round(float(cache.meta["seconds"]), 2),
            "train": round(state.seconds, 2),
        },
        "history": state.history,
    }


def main(argv: list[str]) -> int:
    """``ctl train``: print the run's metrics (without the per-epoch history) as JSON."""
    metrics = train(TrainOptions.parse(argv))
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return 0
