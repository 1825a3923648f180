"""``ctl train``: the CTL heads on cached frozen-backbone features.

Adam, triplet loss with margin 0.2 on d*, same-category negatives drawn afresh every epoch
(optionally the hardest valid one in the batch), an optional in-batch softmax contrastive term
(``training.loss.CTLLoss``); optional side terms (docs/outfits-results.md): each training
pair's product cut out of its street photo pulled to its catalog photo (``in_scene_loss``), the
category attention told to look at the scene's other labelled products (``attention_nll``),
outfit item pairs and composed outfits. The scene-level val split is evaluated every N
epochs by AUC (= binary-choice accuracy, computed exactly against every valid same-category
catalog product). Keeps the best checkpoint, resumes from ``last.pt``. Everything later steps
need lands in the run directory. ``run`` orchestrates ``train_one_epoch`` and ``evaluate``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from index.atomic import atomic_path, write_json
from index.progress import Progress
from model.ctl import CTLModel
from training import crop
from training import metrics as M
from training.config import OUTFITS_ENV, TrainingSettings
from training.features import FeatureCache, FeatureOptions, add_arguments, load_cache
from training.item_pairs import ItemPairs, fitb, item_pair_loss
from training.joint import OutfitDomain, outfit_loss, outfit_metrics
from training.loss import NEGATIVES, CTLLoss, attention_nll, triplet_loss
from training.outfit_features import build_outfit_cache
from training.outfits import OutfitData, outfits_available
from training.region_style import catalog_sampler, region_style_loss
from training.sampling import Example, TripletSampler
from training.split import UNUSED, keep_train_fraction, split_scenes
from training.stl import BBox, STLData

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class TrainOptions(FeatureOptions):
    """``ctl train``'s flags, typed (``build_parser`` holds their defaults and help)."""

    out: Path
    epochs: int
    seed: int
    resume: bool
    init_seed: int | None
    batch_size: int
    lr: float
    weight_decay: float
    margin: float
    dim: int
    hidden: int
    dropout: float
    input_dropout: float
    negatives: str
    contrastive: float
    temperature: float
    eval_every: int
    outfits: Path
    no_outfits: bool
    outfit_weight: float
    outfit_attention: float
    domain_norm: bool
    outfit_eval: bool
    compositions: int
    in_scene_weight: float
    item_pair_weight: float
    stl_attention: float
    region_style_weight: float
    standardize: bool
    train_fraction: float

    @property
    def model_seed(self) -> int:
        """The seed of initialization, dropout and the ``--train-fraction`` subset (the split and
        sampling stay on ``seed``)."""
        return self.seed if self.init_seed is None else self.init_seed

    def loss(self) -> CTLLoss:
        return CTLLoss(self.margin, self.negatives, self.contrastive, self.temperature)

    @property
    def in_scene(self) -> bool:
        """Whether the run needs the products cut out of their scenes."""
        return self.in_scene_weight > 0 or self.region_style_weight > 0


@dataclass
class Tensors:
    """The cached features as float32 tensors, views stacked first: (V, N, ...)."""

    scene_global: torch.Tensor
    scene_regions: torch.Tensor
    product_global: torch.Tensor
    in_scene: torch.Tensor | None = None  # (V, E, G): example i's product cut out of its scene
    product_regions: torch.Tensor | None = None  # (V, P, R, L)
    in_scene_regions: torch.Tensor | None = None  # (V, E, R, L)

    @classmethod
    def load(
        cls, cache: FeatureCache, views: list[str], in_scene: bool = False, regions: bool = False
    ) -> Tensors:
        """The arrays every run needs; ``in_scene`` and the ``regions`` of products and of
        in-scene crops only when asked for."""

        def stack(kind: str) -> torch.Tensor:
            return torch.from_numpy(
                np.stack([cache.array(kind, v) for v in views]).astype(np.float32)
            )

        g, r, p = (stack(k) for k in ("scene_global", "scene_regions", "product_global"))
        t = cls(g, r, p, stack("in_scene_global") if in_scene else None)
        if regions:
            t.product_regions, t.in_scene_regions = map(
                stack, ("product_regions", "in_scene_regions")
            )
        return t


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
    in_scene: list[Example]  # training split; row: the example's row of ``in_scene_global``
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
        in_scene = []
        for i, e in enumerate(raw):
            scene_of_row[e["crop"]] = e["scene"]
            if split[e["scene"]] == UNUSED:
                continue
            ex = Example(e["crop"], e["scene"], row[e["product"]], cat_idx[e["category"]])
            examples[split[e["scene"]]].append(ex)
            if split[e["scene"]] == "train":
                in_scene.append(Example(i, e["scene"], ex.product, ex.category))
        return cls(
            categories, products, product_cat, split, examples, scene_products, scene_of_row,
            in_scene,
        )  # fmt: skip

    def popularity(self) -> dict[str, int]:
        counts = Counter(self.products[e.product] for e in self.examples["train"])
        return dict(counts.most_common())

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

    def train_rows(self) -> torch.Tensor:
        """The cache rows of the training split's scene crops (for feature statistics)."""
        return torch.tensor(sorted({e.row for e in self.examples["train"]}))


@dataclass
class Streams:
    """The run's random streams, saved in ``last.pt`` so that a resumed run continues them:
    STL triplets (``rng``), views (``gen``), composed-outfit batches (``orng``), in-scene
    product batches (``irng``), outfit item pairs (``prng``), region-style grids (``rrng``)
    and torch's global stream (dropout)."""

    rng: np.random.Generator
    gen: torch.Generator
    orng: np.random.Generator
    irng: np.random.Generator
    prng: np.random.Generator
    rrng: np.random.Generator

    @classmethod
    def seeded(cls, seed: int, model_seed: int) -> Streams:
        torch.manual_seed(model_seed)  # the dropout stream, independent of the model's size
        gen = torch.Generator().manual_seed(seed)
        # Each side stream is its own, so that the STL stream stays as it is without them.
        side = (np.random.default_rng([seed, k]) for k in (16, 17, 18, 19))
        return cls(np.random.default_rng(seed), gen, *side)

    def state(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "orng": self.orng.bit_generator.state,
            "irng": self.irng.bit_generator.state,
            "prng": self.prng.bit_generator.state,
            "rrng": self.rrng.bit_generator.state,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        for name in ("orng", "irng", "prng", "rrng"):
            if name in state:
                getattr(self, name).bit_generator.state = state[name]


@dataclass
class SideBatches:
    """Triplets of another kind (composed outfits, in-scene products, outfit item pairs): one
    weighted batch joins every STL step (interleaved), a fresh epoch of them drawn whenever they
    run out."""

    sampler: TripletSampler
    rng: np.random.Generator
    batch_size: int
    weight: float
    loss_of: Callable[[CTLModel, np.ndarray], torch.Tensor]
    queue: list[np.ndarray] = field(default_factory=list)

    def loss(self, model: CTLModel) -> torch.Tensor:
        if not self.queue:  # batches of one would break batch normalization
            ts, b = self.sampler.epoch(self.rng), self.batch_size
            self.queue = [ts[j : j + b] for j in range(0, len(ts), b) if len(ts) - j >= 2][::-1]
        return self.weight * self.loss_of(model, self.queue.pop())


def in_scene_loss(
    model: CTLModel, t: Tensors, batch: np.ndarray, margin: float, rng: np.random.Generator
) -> torch.Tensor:
    """Triplet loss through the product head: a product cut out of its street photo (rows
    ``[example, positive, negative]``) is nearer its own catalog photo than another product of
    its category. It pulls the two domains' features of the same garment together, which the
    frozen ImageNet features keep apart; views drawn from ``rng``."""
    assert t.in_scene is not None
    v = torch.from_numpy(rng.integers(t.in_scene.shape[0], size=(3, len(batch))))
    a, p, n = (torch.from_numpy(batch[:, k]) for k in range(3))
    f_a = model.product_embedding(t.in_scene[v[0], a])
    f_p = model.product_embedding(t.product_global[v[1], p])
    f_n = model.product_embedding(t.product_global[v[2], n])
    return triplet_loss(2 - (f_a * f_p).sum(-1), 2 - (f_a * f_n).sum(-1), margin)


def exclusion_mask(batch: np.ndarray, ds: Dataset) -> torch.Tensor:
    """(B, 2B): candidate product j (positives then negatives) is paired with scene i."""
    cand = np.concatenate([batch[:, 1], batch[:, 2]])
    mask = np.zeros((len(batch), len(cand)), bool)
    for i, row in enumerate(batch[:, 0]):
        paired = ds.scene_products.get(ds.scene_of_row[row], set())
        mask[i] = [c in paired for c in cand]
    return torch.from_numpy(mask)


def embed_triplets(
    model: CTLModel, t: Tensors, batch: np.ndarray, cats: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (d*(s, x) = 2 - <q, f_x>), f_pos, f_neg and the attention of the positive's category
    over the scene's regions, of ``[scene_row, positive, negative]`` rows, each image in an
    independently drawn view."""
    n_views = t.scene_global.shape[0]
    v = torch.randint(n_views, (3, len(batch)), generator=gen)
    s, p, n = (torch.from_numpy(batch[:, k]) for k in range(3))
    f_s, f_i, keys = model.scene_embeddings(t.scene_global[v[0], s], t.scene_regions[v[0], s])
    att = model.attention(keys, cats)
    q = model.query_vector(f_s, f_i, att)
    f_pos = model.product_embedding(t.product_global[v[1], p])
    f_neg = model.product_embedding(t.product_global[v[2], n])
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
    side: Sequence[SideBatches] = (),
    attention_weight: float = 0.0,
) -> float:
    """One optimizer step on ``batch``; ``cache_rows``: the same triplets as rows of the feature
    cache when ``t`` holds freshly computed features instead (the end-to-end benchmark);
    ``side``: further loss terms of this step (``SideBatches``);
    ``attention_weight``: of ``attention_nll`` on the dataset's attention targets."""
    rows = batch if cache_rows is None else cache_rows
    cats = torch.from_numpy(ds.product_cat[rows[:, 1]])
    excl = exclusion_mask(rows, ds)
    q, f_pos, f_neg, att = embed_triplets(model, t, batch, cats, gen)
    loss = loss_fn(q, f_pos, f_neg, cats, excl)
    if attention_weight > 0 and ds.attention_targets:
        loss = loss + attention_weight * attention_nll(att, ds.attention_target(rows))
    for s in side:
        loss = loss + s.loss(model)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.item())


def train_one_epoch(
    model: CTLModel,
    opt: torch.optim.Optimizer,
    loss_fn: CTLLoss,
    t: Tensors,
    ds: Dataset,
    sampler: TripletSampler,
    streams: Streams,
    batch_size: int,
    side: Sequence[SideBatches] = (),
    attention_weight: float = 0.0,
) -> float:
    """One pass over a fresh draw of training triplets; returns the mean loss."""
    model.train()
    triplets = sampler.epoch(streams.rng)
    losses = []
    for i in range(0, len(triplets), batch_size):
        batch = triplets[i : i + batch_size]
        if len(batch) < 2:
            continue
        losses.append(
            train_step(
                model, opt, loss_fn, t, batch, streams.gen, ds,
                side=side, attention_weight=attention_weight,
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
    """The heads, initialized from ``opts.model_seed``, standardizing with training statistics."""
    torch.manual_seed(opts.model_seed)  # before the model exists: its initialization is seeded
    model = CTLModel(
        t.scene_global.shape[-1],
        t.scene_regions.shape[-1],
        ds.categories,
        opts.dim,
        opts.hidden,
        opts.dropout,
        opts.input_dropout,
    )
    if opts.standardize:
        rows = ds.train_rows()
        model.set_input_stats(
            torch.cat([t.scene_global[:, rows].flatten(0, 1), t.product_global.flatten(0, 1)]),
            t.scene_regions[:, rows].flatten(0, 2),
        )
    return model


@dataclass
class Outfits:
    """What the run takes from the stylists' outfits: composed scenes and item pairs, each
    ``None`` when not wanted, and the seconds spent computing their features."""

    domain: OutfitDomain | None = None
    pairs: ItemPairs | None = None
    seconds: float = 0.0

    @classmethod
    def load(cls, opts: TrainOptions, categories: list[str]) -> Outfits:
        """The parts the options ask for, when the outfits are present (else said in one log
        line)."""
        want_domain = opts.outfit_weight > 0 or opts.outfit_eval
        want_pairs = opts.item_pair_weight > 0 or opts.outfit_eval
        if opts.no_outfits or not (want_domain or want_pairs):
            return cls()
        if not outfits_available(opts.outfits):
            log.info(
                "no outfits at %s (set --outfits or $%s): training on STL alone",
                opts.outfits,
                OUTFITS_ENV,
            )
            return cls()
        from model.backbones import build_backbone

        backbone = build_backbone(opts.backbone, opts.backbone_weights)
        data = OutfitData.load(opts.outfits)
        out = cls()
        # Compositions only for composed scenes: item pairs need the photos alone (0 per outfit).
        cache, out.seconds = build_outfit_cache(
            data,
            backbone,
            opts.cache,
            categories,
            opts.compositions if want_domain else 0,
            0,
            opts.batch_size_features,
            opts.engine,
        )
        if want_domain:
            out.domain = OutfitDomain.build(cache, categories, opts.seed, backbone.grid)
        if want_pairs:
            out.pairs = ItemPairs.build(cache, data, categories, opts.seed)
        return out


@dataclass
class RunState:
    """Where a run stands after an epoch: what ``last.pt`` keeps beside the weights and the
    optimizer, the random streams included (a resumed run continues them)."""

    streams: Streams
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"auc": -1.0, "epoch": 0})
    seconds: float = 0.0
    side: Sequence[SideBatches] = ()  # their queues continue across epochs, so they are kept

    def save(self, path: Path, model: CTLModel, opt: torch.optim.Optimizer) -> None:
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": self.epoch}
        state |= self.streams.state() | {"history": self.history, "best": self.best}
        state["side_queues"] = [s.queue for s in self.side]
        with atomic_path(path) as tmp:
            torch.save(state | {"seconds": self.seconds}, tmp)

    def resume(self, path: Path, model: CTLModel, opt: torch.optim.Optimizer) -> None:
        saved = torch.load(path, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        self.streams.load(saved)
        self.epoch, self.history = saved["epoch"], saved["history"]
        self.best, self.seconds = saved["best"], saved["seconds"]
        for s, queue in zip(self.side, saved.get("side_queues", []), strict=False):
            s.queue = queue
        log.info("resuming after epoch %d (best val AUC %.4f)", self.epoch, self.best["auc"])


def build_parser(settings: TrainingSettings) -> argparse.ArgumentParser:
    """``ctl train``'s flags: the feature cache's, then training's."""
    p = argparse.ArgumentParser(prog="ctl train", description=__doc__.split("\n")[0])
    add_arguments(p, settings)
    p.add_argument("--out", type=Path, required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=settings.seed)
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument(
        "--init-seed",
        type=int,
        default=None,
        help="seed of initialization and dropout (default --seed; the split and sampling stay on "
        "--seed): another model on the same split, e.g. an ensemble's control",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--dim", type=int, default=settings.embedding_dim)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--input-dropout", type=float, default=0.0)
    p.add_argument("--negatives", choices=NEGATIVES, default="random")
    p.add_argument("--contrastive", type=float, default=0.0, help="weight of in-batch softmax loss")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument(
        "--outfits",
        type=Path,
        default=settings.outfits_dir,
        help=f"stylist outfits directory (${OUTFITS_ENV}); used when present and "
        "--outfit-weight or --item-pair-weight > 0 or --outfit-eval",
    )
    p.add_argument("--no-outfits", action="store_true", help="train on STL alone")
    p.add_argument(
        "--outfit-weight", type=float, default=0.0, help="weight of composed-outfit batches"
    )
    p.add_argument(
        "--outfit-attention",
        type=float,
        default=0.0,
        help="weight of attention supervision by the composer's item boxes",
    )
    p.add_argument(
        "--domain-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="map outfit features onto the STL features' per-dimension mean/std",
    )
    p.add_argument(
        "--outfit-eval",
        action="store_true",
        help="report FITB (composed scenes, item pairs) and composed-scene attention even when "
        "not training on outfits",
    )
    p.add_argument("--compositions", type=int, default=1, help="composed scenes per outfit")
    p.add_argument(
        "--in-scene-weight",
        type=float,
        default=0.0,
        help="weight of in-scene products (each training pair's product cut out of its scene) "
        "against their catalog photos; 0: off",
    )
    p.add_argument(
        "--stl-attention",
        type=float,
        default=0.0,
        help="weight of attention supervision on STL crops by the scene's other labelled "
        "products' boxes; 0: off",
    )
    p.add_argument(
        "--item-pair-weight",
        type=float,
        default=0.0,
        help="weight of outfit item pairs (an outfit's held-out item against the rest of it, "
        "product to product)",
    )
    p.add_argument(
        "--region-style-weight",
        type=float,
        default=0.0,
        help="weight of region grids (catalog photos, products cut out of their scenes) pulled "
        "to their product's embedding through the local head; 0: off",
    )
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="z-score backbone features with training statistics",
    )
    p.add_argument(
        "--train-fraction",
        type=float,
        default=1.0,
        help="keep this fraction of the training scenes, drawn with --init-seed (default "
        "--seed); val and test unchanged (bench/learning_curve.py)",
    )
    return p


def parse_options(argv: list[str], settings: TrainingSettings | None = None) -> TrainOptions:
    """``ctl train``'s flags as options; out-of-range values exit with a message."""
    args = build_parser(settings or TrainingSettings()).parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.eval_every < 1 or args.compositions < 1:
        raise SystemExit(
            "ctl train: --epochs, --eval-every and --compositions must be >= 1, --batch-size >= 2"
        )
    if not 0 < args.train_fraction <= 1:
        raise SystemExit("ctl train: --train-fraction must be in (0, 1]")
    return TrainOptions.from_args(args)


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
    regions = opts.region_style_weight > 0
    cache, feature_seconds = load_cache(opts, in_scene=opts.in_scene, regions=regions)
    seconds = {"features": feature_seconds, "features_wall": time.perf_counter() - t0}
    data = STLData.load(opts.data)
    ds = Dataset.build(cache, data, opts.seed, opts.train_fraction, opts.model_seed)
    if opts.stl_attention > 0:
        ds.add_attention_targets(cache, data)
        log.info("attention targets: %d training crops", len(ds.attention_targets))
    t = Tensors.load(cache, list(opts.views), opts.in_scene, regions)
    model = build_model(opts, t, ds)
    t0 = time.perf_counter()
    outfits = Outfits.load(opts, ds.categories)
    seconds["outfit_features"] = outfits.seconds
    seconds["outfit_features_wall"] = time.perf_counter() - t0
    if outfits.domain is not None and opts.domain_norm:
        rows = ds.train_rows()
        outfits.domain.match_moments(
            t.scene_global[:, rows].flatten(0, 1),
            t.scene_regions[:, rows].flatten(0, 2),
            t.product_global.flatten(0, 1),
        )
    if outfits.pairs is not None and opts.domain_norm:
        outfits.pairs.match_moments(t.product_global.flatten(0, 1))
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
    loss_fn = opts.loss()
    streams = Streams.seeded(opts.seed, opts.model_seed)
    state = RunState(streams, side=side_batches(opts, t, ds, outfits, streams))
    if opts.resume and (out / "last.pt").is_file():
        state.resume(out / "last.pt", model, opt)

    with Progress(log, opts.epochs, "training", "epoch", state.epoch) as progress:
        for epoch in range(state.epoch + 1, opts.epochs + 1):
            t_epoch = time.perf_counter()
            loss = train_one_epoch(
                model, opt, loss_fn, t, ds, samplers["train"], state.streams, opts.batch_size,
                state.side, opts.stl_attention,
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
    metrics = final_metrics(opts, cache, samplers, state, seconds, model, outfits)
    write_json(out / "metrics.json", metrics)
    log.info(
        "best val AUC %.4f at epoch %d; train %.1f s",
        state.best["auc"], state.best["epoch"], state.seconds,
    )  # fmt: skip
    return metrics


def side_batches(
    opts: TrainOptions, t: Tensors, ds: Dataset, outfits: Outfits, streams: Streams
) -> list[SideBatches]:
    """The weighted side losses the options ask for: composed outfits, in-scene products,
    outfit item pairs, region grids of catalog photos and of in-scene products."""
    side = []
    dom, pairs = outfits.domain, outfits.pairs
    if dom is not None and opts.outfit_weight > 0:
        side.append(
            SideBatches(
                dom.samplers["train"], streams.orng, opts.batch_size, opts.outfit_weight,
                lambda m, b: outfit_loss(m, dom, b, opts.margin, opts.outfit_attention),
            )
        )  # fmt: skip
    if opts.in_scene_weight > 0:
        sampler = TripletSampler(ds.in_scene, ds.product_cat, ds.scene_products)
        side.append(
            SideBatches(
                sampler, streams.irng, opts.batch_size, opts.in_scene_weight,
                lambda m, b: in_scene_loss(m, t, b, opts.margin, streams.irng),
            )
        )  # fmt: skip
    if pairs is not None and opts.item_pair_weight > 0:
        side.append(
            SideBatches(
                pairs.samplers["train"], streams.prng, opts.batch_size, opts.item_pair_weight,
                lambda m, b: item_pair_loss(m, pairs, b, opts.margin),
            )
        )  # fmt: skip
    if opts.region_style_weight > 0:
        assert t.product_regions is not None and t.in_scene_regions is not None
        in_scene = TripletSampler(ds.in_scene, ds.product_cat, ds.scene_products)
        for sampler, grids in (
            (catalog_sampler(ds.product_cat), t.product_regions),
            (in_scene, t.in_scene_regions),
        ):
            side.append(
                SideBatches(
                    sampler, streams.rrng, opts.batch_size, opts.region_style_weight,
                    functools.partial(
                        region_style_loss, grids=grids, product_global=t.product_global,
                        margin=opts.margin, rng=streams.rrng,
                    ),
                )
            )  # fmt: skip
    return side


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
        "train": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
    }
    write_json(opts.out / "config.json", config)
    write_json(opts.out / "split.json", ds.split)
    write_json(opts.out / "categories.json", ds.categories)
    write_json(opts.out / "popularity.json", ds.popularity())
    return config


def final_metrics(
    opts: TrainOptions,
    cache: FeatureCache,
    samplers: dict[str, TripletSampler],
    state: RunState,
    seconds: dict[str, float],
    model: CTLModel,
    outfits: Outfits,
) -> dict[str, Any]:
    """``metrics.json``: the best val AUC, counts, timings and, with outfits, the best
    checkpoint's FITB (composed scenes; item pairs: ``items``) and composed-scene attention."""
    outfit_report: dict[str, Any] = {}
    if outfits.domain is not None or outfits.pairs is not None:
        best = CTLModel.from_config(model.config())
        best.load_state_dict(torch.load(opts.out / "checkpoint.pt", weights_only=False)["model"])
        for s in ("val", "test"):
            report: dict[str, Any] = {}
            if outfits.domain is not None:
                report = outfit_metrics(best, outfits.domain, s, opts.seed)
            if outfits.pairs is not None:
                report["items"] = fitb(best, outfits.pairs, s, opts.seed)
            outfit_report[s] = report
        log.info("outfits (best checkpoint): %s", outfit_report)
    return {
        "best_val_auc": state.best["auc"],
        "best_epoch": state.best["epoch"],
        "epochs": opts.epochs,
        "backbone": opts.backbone,
        **{f"{k}_pairs": len(samplers[k].examples) for k in ("train", "val", "test")},
        "seconds": {
            "features": round(seconds["features"], 2),
            "features_wall": round(seconds["features_wall"], 2),
            "features_total_cached": round(float(cache.meta["seconds"]), 2),
            "train": round(state.seconds, 2),
            "outfit_features": round(seconds["outfit_features"], 2),
            "outfit_features_wall": round(seconds["outfit_features_wall"], 2),
        },
        "outfits": outfit_report,
        "history": state.history,
    }


def main(argv: list[str]) -> int:
    """``ctl train``: print the run's metrics (without the per-epoch history) as JSON."""
    metrics = train(parse_options(argv))
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return 0
