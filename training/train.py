"""``ctl train``: the CTL heads on cached frozen-backbone features.

Adam, triplet loss with margin 0.2 on d*, same-category negatives drawn afresh every epoch
(optionally the hardest valid one in the batch), an optional in-batch softmax contrastive term,
and the scene-level val split evaluated every N epochs by AUC (= binary-choice accuracy, computed
exactly against every valid same-category catalog product). Keeps the best checkpoint, resumes
from ``last.pt``. Everything later steps need lands in the run directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.ctl import CTLModel
from service.config import Settings
from training.atomic import atomic_path, write_json
from training.features import FeatureCache, add_arguments, cache_from_args
from training.joint import OutfitDomain, outfit_loss, outfit_metrics
from training.outfit_features import build_outfit_cache
from training.outfits import OUTFITS_ENV, OutfitData, default_outfits_dir, outfits_available
from training.sampling import Example, TripletSampler
from training.split import split_scenes
from training.stl import STLData

log = logging.getLogger(__name__)


@dataclass
class Tensors:
    """The cached features as float32 tensors, views stacked first: (V, N, ...)."""

    scene_global: torch.Tensor
    scene_regions: torch.Tensor
    product_global: torch.Tensor

    @classmethod
    def load(cls, cache: FeatureCache, views: list[str]) -> Tensors:
        def stack(kind: str) -> torch.Tensor:
            return torch.from_numpy(
                np.stack([cache.array(kind, v) for v in views]).astype(np.float32)
            )

        return cls(stack("scene_global"), stack("scene_regions"), stack("product_global"))


@dataclass
class Dataset:
    """CTL examples split by scene, with everything the sampler and the evaluation need."""

    categories: list[str]
    products: list[str]
    product_cat: np.ndarray  # (P,) category index
    split: dict[str, str]
    examples: dict[str, list[Example]]  # split -> examples
    scene_products: dict[str, set[int]]

    @classmethod
    def build(cls, cache: FeatureCache, data: STLData, seed: int) -> Dataset:
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
        examples: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        for e in raw:
            ex = Example(e["crop"], e["scene"], row[e["product"]], cat_idx[e["category"]])
            examples[split[e["scene"]]].append(ex)
        return cls(categories, products, product_cat, split, examples, scene_products)

    def popularity(self) -> dict[str, int]:
        counts = Counter(self.products[e.product] for e in self.examples["train"])
        return dict(counts.most_common())


@torch.no_grad()
def evaluate_auc(
    model: CTLModel, t: Tensors, sampler: TripletSampler, examples: list[Example]
) -> float:
    """Mean over pairs of P(d*(s, neg) > d*(s, pos)) over every valid negative (ties count 1/2)."""
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


def train_step(
    model: CTLModel,
    opt: torch.optim.Optimizer,
    t: Tensors,
    batch: np.ndarray,
    args: argparse.Namespace,
    gen: torch.Generator,
    ds: Dataset,
    scene_of_row: list[str],
    cache_rows: np.ndarray | None = None,
    outfits: tuple[OutfitDomain, np.ndarray] | None = None,
) -> float:
    """One optimizer step on ``batch``; ``cache_rows``: the same triplets as rows of the feature
    cache when ``t`` holds freshly computed features instead (the end-to-end benchmark);
    ``outfits``: a batch of composed-outfit triplets whose weighted loss joins this step."""
    rows = batch if cache_rows is None else cache_rows
    cats = torch.from_numpy(ds.product_cat[rows[:, 1]])
    excl = exclusion_mask(rows, scene_of_row, ds)
    loss = triplet_step(model, t, batch, cats, args, gen, excl)
    if outfits is not None:
        dom, obatch = outfits
        oloss = outfit_loss(model, dom, obatch, args.margin, args.outfit_attention)
        loss = loss + args.outfit_weight * oloss
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.item())


def triplet_loss(d_pos: torch.Tensor, d_neg: torch.Tensor, margin: float) -> torch.Tensor:
    """mean(max(0, d*(s, p) - d*(s, n) + margin)): zero once every positive wins by the margin."""
    return F.relu(d_pos - d_neg + margin).mean()


def triplet_step(
    model: CTLModel,
    t: Tensors,
    batch: np.ndarray,
    cats: torch.Tensor,
    args: argparse.Namespace,
    gen: torch.Generator,
    excl: torch.Tensor,
) -> torch.Tensor:
    """The loss of one batch of ``[scene_row, positive, negative]`` rows."""
    b = len(batch)
    n_views = t.scene_global.shape[0]
    v = torch.randint(n_views, (3, b), generator=gen)  # an independent random view per image
    s, p, n = (torch.from_numpy(batch[:, k]) for k in range(3))
    f_s, f_i, keys = model.scene_embeddings(t.scene_global[v[0], s], t.scene_regions[v[0], s])
    att = model.attention(keys, cats)
    q = model.query_vector(f_s, f_i, att)  # d*(s, x) = 2 - <q, f_x>
    f_pos = model.product_embedding(t.product_global[v[1], p])
    f_neg = model.product_embedding(t.product_global[v[2], n])
    sim_pos = (q * f_pos).sum(-1)
    sim_neg = (q * f_neg).sum(-1)
    if args.negatives in ("hard", "semihard"):
        # Every product in the batch is a candidate negative for every scene: same category,
        # not paired with the scene. "hard" takes the most similar one; "semihard" the most
        # similar one that is still farther than the positive (else the drawn negative).
        cand = torch.cat([f_pos, f_neg])  # (2B, D)
        cand_cat = torch.cat([cats, cats])
        sim = q @ cand.T  # (B, 2B)
        valid = (cand_cat[None, :] == cats[:, None]) & ~excl
        if args.negatives == "semihard":
            valid &= sim < sim_pos.detach()[:, None]
        mined = sim.masked_fill(~valid, -1e4).max(1).values
        sim_neg = torch.where(valid.any(1), mined, sim_neg)
    loss = triplet_loss(2 - sim_pos, 2 - sim_neg, args.margin)
    if args.contrastive > 0:
        cand = torch.cat([f_pos, f_neg])
        logits = (q @ cand.T) / args.temperature
        mask = excl.clone()
        mask[torch.arange(b), torch.arange(b)] = False  # the positive stays
        logits = logits.masked_fill(mask, -1e4)
        loss = loss + args.contrastive * F.cross_entropy(logits, torch.arange(b))
    return loss


def exclusion_mask(batch: np.ndarray, scene_of_row: list[str], ds: Dataset) -> torch.Tensor:
    """(B, 2B): candidate product j (positives then negatives) is paired with scene i."""
    cand = np.concatenate([batch[:, 1], batch[:, 2]])
    mask = np.zeros((len(batch), len(cand)), bool)
    for i, row in enumerate(batch[:, 0]):
        paired = ds.scene_products.get(scene_of_row[row], set())
        mask[i] = [c in paired for c in cand]
    return torch.from_numpy(mask)


def load_outfits(
    args: argparse.Namespace, categories: list[str], backbone_name: str
) -> tuple[OutfitDomain | None, float]:
    """The outfit domain when wanted and present (``None`` otherwise, said in one log line),
    and the seconds spent computing its features."""
    if args.no_outfits or (args.outfit_weight <= 0 and not args.outfit_eval):
        return None, 0.0
    if not outfits_available(args.outfits):
        log.info(
            "no outfits at %s (set --outfits or $%s): training on STL alone",
            args.outfits,
            OUTFITS_ENV,
        )
        return None, 0.0
    from model.backbones import build_backbone

    backbone = build_backbone(backbone_name, args.backbone_weights)
    cache, spent = build_outfit_cache(
        OutfitData.load(args.outfits),
        backbone,
        args.cache,
        categories,
        args.compositions,
        0,
        args.batch_size_features,
        args.engine,
    )
    return OutfitDomain.build(cache, categories, args.seed, backbone.grid), spent


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def build_parser(settings: Settings) -> argparse.ArgumentParser:
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
    p.add_argument("--negatives", choices=("random", "hard", "semihard"), default="random")
    p.add_argument("--contrastive", type=float, default=0.0, help="weight of in-batch softmax loss")
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument(
        "--outfits",
        type=Path,
        default=default_outfits_dir(),
        help=f"stylist outfits directory (${OUTFITS_ENV}); used when present and "
        "--outfit-weight > 0 or --outfit-eval",
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
        help="report FITB and composed-scene attention even when not training on outfits",
    )
    p.add_argument("--compositions", type=int, default=1, help="composed scenes per outfit")
    p.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="z-score backbone features with training statistics",
    )
    return p


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) training into ``args.out``; returns the metrics written there."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("training")  # this step's and the feature cache's progress
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        return _train(args, out)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _train(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    cache, feature_seconds = cache_from_args(args)
    feature_wall = time.perf_counter() - t0
    data = STLData.load(args.data)
    ds = Dataset.build(cache, data, args.seed)
    t = Tensors.load(cache, [v for v in args.views.split(",") if v])
    init_seed = args.seed if args.init_seed is None else args.init_seed
    torch.manual_seed(init_seed)  # before the model exists: its initialization is seeded too
    model = CTLModel(
        t.scene_global.shape[-1],
        t.scene_regions.shape[-1],
        ds.categories,
        args.dim,
        args.hidden,
        args.dropout,
        args.input_dropout,
    )
    if args.standardize:
        train_rows = torch.tensor(sorted({e.row for e in ds.examples["train"]}))
        model.set_input_stats(
            torch.cat(
                [t.scene_global[:, train_rows].flatten(0, 1), t.product_global.flatten(0, 1)]
            ),
            t.scene_regions[:, train_rows].flatten(0, 2),
        )
    t_out = time.perf_counter()
    dom, outfit_feature_seconds = load_outfits(args, ds.categories, args.backbone)
    outfit_feature_wall = time.perf_counter() - t_out
    if dom is not None and args.domain_norm:
        train_rows = torch.tensor(sorted({e.row for e in ds.examples["train"]}))
        dom.match_moments(
            t.scene_global[:, train_rows].flatten(0, 1),
            t.scene_regions[:, train_rows].flatten(0, 2),
            t.product_global.flatten(0, 1),
        )
    use_outfits = dom is not None and args.outfit_weight > 0
    config = {
        "model": model.config(),
        "backbone": args.backbone,
        "backbone_weights": str(args.backbone_weights) if args.backbone_weights else None,
        "backbone_info": cache.meta["backbone"],
        "data": str(Path(args.data).resolve()),
        "cache": str(cache.path.resolve()),
        "train": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    write_json(out / "config.json", config)
    write_json(out / "split.json", ds.split)
    write_json(out / "categories.json", ds.categories)
    write_json(out / "popularity.json", ds.popularity())
    samplers = {
        k: TripletSampler(v, ds.product_cat, ds.scene_products) for k, v in ds.examples.items()
    }
    train_s, val_s = samplers["train"], samplers["val"]
    log.info(
        "pairs: train %d, val %d, test %d; %d products, %d categories; model %s",
        len(train_s.examples),
        len(val_s.examples),
        len(samplers["test"].examples),
        len(ds.products),
        len(ds.categories),
        model.config() | {"categories": len(ds.categories)},
    )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(init_seed)  # the dropout stream, independent of the model's size
    gen = torch.Generator().manual_seed(args.seed)
    orng = np.random.default_rng([args.seed, 16])  # outfit batches: the STL stream stays as is
    outfit_queue: list[np.ndarray] = []
    history: list[dict[str, Any]] = []
    best = {"auc": -1.0, "epoch": 0}
    start_epoch, train_seconds = 1, 0.0
    if args.resume and (out / "last.pt").is_file():
        state = torch.load(out / "last.pt", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        if "orng" in state:
            orng.bit_generator.state = state["orng"]
        history, best = state["history"], state["best"]
        start_epoch, train_seconds = state["epoch"] + 1, state["seconds"]
        log.info("resuming after epoch %d (best val AUC %.4f)", state["epoch"], best["auc"])
    scene_of_row = [""] * t.scene_global.shape[1]
    for e in cache.examples:
        scene_of_row[e["crop"]] = e["scene"]

    for epoch in range(start_epoch, args.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        triplets = train_s.epoch(rng)
        losses = []
        for i in range(0, len(triplets), args.batch_size):
            batch = triplets[i : i + args.batch_size]
            if len(batch) < 2:
                continue
            outfits = None
            if use_outfits:
                assert dom is not None
                if not outfit_queue:  # a fresh epoch of composed-outfit triplets
                    ot = dom.samplers["train"].epoch(orng)
                    outfit_queue = [
                        ot[j : j + args.batch_size] for j in range(0, len(ot), args.batch_size)
                    ]
                    outfit_queue.reverse()
                outfits = (dom, outfit_queue.pop())
            losses.append(
                train_step(model, opt, t, batch, args, gen, ds, scene_of_row, outfits=outfits)
            )
        train_seconds += time.perf_counter() - t_epoch
        record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else 0.0}
        if epoch % args.eval_every == 0 or epoch == args.epochs:
            auc = evaluate_auc(model, t, val_s, val_s.examples) if val_s.examples else 0.5
            record["val_auc"] = auc
            if auc > best["auc"]:
                best = {"auc": auc, "epoch": epoch}
                _atomic_save({"model": model.state_dict(), "config": config}, out / "checkpoint.pt")
            log.info(
                "epoch %d loss %.4f val AUC %.4f (best %.4f @ %d)",
                epoch,
                record["loss"],
                auc,
                best["auc"],
                best["epoch"],
            )
        else:
            log.info("epoch %d loss %.4f", epoch, record["loss"])
        history.append(record)
        _atomic_save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "epoch": epoch,
                "rng": rng.bit_generator.state,
                "gen": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "orng": orng.bit_generator.state,
                "history": history,
                "best": best,
                "seconds": train_seconds,
            },
            out / "last.pt",
        )
    outfit_report: dict[str, Any] = {}
    if dom is not None:
        best_model = CTLModel.from_config(model.config())
        best_model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=False)["model"])
        outfit_report = {
            split: outfit_metrics(best_model, dom, split, args.seed) for split in ("val", "test")
        }
        log.info("outfits (best checkpoint): %s", outfit_report)
    metrics = {
        "best_val_auc": best["auc"],
        "best_epoch": best["epoch"],
        "epochs": args.epochs,
        "backbone": args.backbone,
        "train_pairs": len(train_s.examples),
        "val_pairs": len(val_s.examples),
        "test_pairs": len(samplers["test"].examples),
        "seconds": {
            "features": round(feature_seconds, 2),
            "features_wall": round(feature_wall, 2),
            "features_total_cached": round(float(cache.meta["seconds"]), 2),
            "train": round(train_seconds, 2),
            "outfit_features": round(outfit_feature_seconds, 2),
            "outfit_features_wall": round(outfit_feature_wall, 2),
        },
        "outfits": outfit_report,
        "history": history,
    }
    write_json(out / "metrics.json", metrics)
    log.info(
        "best val AUC %.4f at epoch %d; train %.1f s", best["auc"], best["epoch"], train_seconds
    )
    return metrics


def main(argv: list[str]) -> int:
    """``ctl train``: print the run's metrics (without the per-epoch history) as JSON."""
    args = build_parser(Settings()).parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.eval_every < 1:
        raise SystemExit("ctl train: --epochs and --eval-every must be >= 1, --batch-size >= 2")
    metrics = train(args)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    return 0
