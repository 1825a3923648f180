"""Scoring for ``ctl evaluate``: scene crops and products through the backbone (cached) and
the heads, the model's distances, and every pair ranked against its category."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.backbones import Backbone
from model.ctl import CTLModel
from runtime.artifacts import digest
from runtime.encoder import Encoder
from training import metrics as M
from training.evaluation.pairs import CategoryPairs, Crop, load_crop
from training.features import ChunkBuilder, FeatureCache, cache_key
from training.stl import STLData, rgb

log = logging.getLogger(__name__)

EMBED_CHUNK = 256
Scorer = Callable[[CategoryPairs], np.ndarray]
"""Distances (n pairs, m products of the category; lower = better) of a category's pairs."""


@dataclass(frozen=True)
class Embedded:
    """Backbone and head outputs for a list of images."""

    raw: np.ndarray  # (N, G) backbone global vectors
    emb: np.ndarray  # (N, D) f_s for scenes, f_p for products
    queries: np.ndarray  # (N, C, D) q per category for scenes; empty for products
    attention: np.ndarray  # (N, C, R) for scenes; empty for products


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
    bs: int,
) -> tuple[Embedded, Embedded]:
    """Products and scene crops through the backbone and the heads. Backbone features come from
    the run's feature cache when it holds them all, else from a cache of their own under
    ``cache``, keyed by backbone and inputs and built like the run's (``ChunkBuilder``, ``bs``
    images a batch)."""
    root = str(data.root.resolve())

    def features(
        kind: str, keys: list[str], load: Callable[[int], Image.Image]
    ) -> tuple[np.ndarray, np.ndarray]:
        found = from_training_cache(config, backbone, data, kind, keys)
        if found is not None:
            return found
        path = cache / f"{kind}-{digest(backbone.key(), root, keys)[:16]}"
        name = "scene_global" if kind == "scenes" else "product_global"
        if (path / f"{name}-orig.npy").is_file():
            log.info("using cached backbone features %s", path)
        ChunkBuilder(path, backbone, bs, "auto").fill(
            name, "orig", len(keys), load, regions=kind == "scenes"
        )
        arrays = FeatureCache(path, {})
        regions = arrays.array("scene_regions", "orig") if kind == "scenes" else np.zeros(0)
        return np.asarray(arrays.array(name, "orig"), np.float32), np.asarray(regions, np.float32)

    products = features("products", catalog, lambda i: rgb(data.product_path(catalog[i])))
    crop_keys = [_crop_key(c.scene, c.box) for c in crops]
    scenes = features("scenes", crop_keys, lambda i: load_crop(data, crops[i]))
    return apply_heads(model, *products, scenes=False), apply_heads(model, *scenes, scenes=True)


def embed_onnx(
    encoder: Encoder,
    data: STLData,
    catalog: list[str],
    crops: list[Crop],
    torch_products: Embedded,
    torch_scenes: Embedded,
    bs: int,
) -> tuple[Embedded, Embedded]:
    """Products and scene crops through exported encoders (``ctl evaluate --artifacts``), so
    what is ranked is what the service would answer (an int8 export's accuracy). The backbone
    vectors (``raw``, the baselines' input) stay torch's."""

    def run(n: int, load: Callable[[int], Image.Image], embed: Callable[..., Any]) -> list[Any]:
        out: list[Any] = []
        for start in range(0, n, bs):
            out.extend(embed([load(i) for i in range(start, min(n, start + bs))]))
            if (start // bs) % 20 == 0:
                log.info("ONNX embedding: %d/%d", min(n, start + bs), n)
        return out

    f_p = run(len(catalog), lambda i: rgb(data.product_path(catalog[i])), encoder.embed_products)
    scenes = run(len(crops), lambda i: load_crop(data, crops[i]), encoder.embed_scenes)
    f_s = np.stack([e.f_s for e in scenes])
    f_i = np.stack([e.f_i for e in scenes])
    att = np.stack([e.attention for e in scenes])
    queries = f_s[:, None, :] + np.einsum("ncr,nrd->ncd", att, f_i)
    products = Embedded(torch_products.raw, np.stack(f_p), np.zeros(0), np.zeros(0))
    return products, Embedded(torch_scenes.raw, f_s, queries, att)


def model_scorer(scenes: Embedded, products: Embedded) -> Scorer:
    """The trained model: d* = 2 - <q(s, c), f_p>."""

    def model(g: CategoryPairs) -> np.ndarray:
        q = scenes.queries[g.crops, g.cat_idx].astype(np.float64)
        return 2.0 - q @ products.emb[g.products].T.astype(np.float64)

    return model


def member_scorer(scenes: Embedded, products: Embedded, model: CTLModel, k: int) -> Scorer:
    """Member ``k`` of the ensemble alone: its own slice of the ensemble's vectors."""

    def member(g: CategoryPairs) -> np.ndarray:
        q = model.member_slice(scenes.queries[g.crops, g.cat_idx].astype(np.float64), k)
        return 2.0 - q @ model.member_slice(products.emb[g.products].astype(np.float64), k).T

    return member


def with_prior(scorer: Scorer, bonus: np.ndarray) -> Scorer:
    """``scorer``'s distances less the popularity prior: d* - lambda log(1 + popularity), with
    ``bonus`` = lambda log(1 + popularity) of every catalog product (``index.prior``)."""

    def prior(g: CategoryPairs) -> np.ndarray:
        return scorer(g) - bonus[g.products].astype(np.float64)[None, :]

    return prior


def rank_all(
    groups: dict[str, CategoryPairs], scorer: Scorer, seed: int, draws: int
) -> M.PairScores:
    blocks = {c: M.RankingBlock.build(scorer(g), g.pos, g.exclude) for c, g in groups.items()}
    return M.score_blocks(blocks, seed, draws)
