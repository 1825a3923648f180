"""The outfit feature cache: composed scenes and outfit product photos through the frozen backbone.

For every outfit, ``per_outfit`` compositions: one item held out (a product with an STL category
the model knows, drawn by the recipe's seed), the other items composed into one scene
(``training.composer``). The cache holds, like the STL one (``training.features``) and built by
the same chunked, resumable ``ChunkBuilder``: ``scene_global-<view>.npy`` (N, G) and
``scene_regions-<view>.npy`` (N, R, L) of the compositions, ``product_global-<view>.npy`` (P, G)
of every outfit product photo, and ``meta.json`` with the examples (``outfit``, ``product`` (the
held-out item's product row), ``category``, ``crop`` (scene row), ``others``, ``boxes`` (the
other items' boxes, normalized to the canvas)). The directory is keyed by the recipe: backbone
identity, composer version, compositions per outfit, seed, categories and the outfits data.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from index.atomic import write_json
from model.backbones import Backbone
from training.composer import COMPOSER_VERSION, Composition, Cutout, compose_cutouts, cutout
from training.features import ChunkBuilder, FeatureCache, cache_meta
from training.outfits import OutfitData
from training.stl import rgb

log = logging.getLogger(__name__)

OUTFIT_VIEWS = ("orig",)
"""One view: composition is itself the augmentation, and every view costs a backbone pass."""


def outfit_cache_key(
    backbone: Backbone, data: OutfitData, categories: Sequence[str], per_outfit: int, seed: int
) -> str:
    blob = json.dumps(
        {
            "backbone": backbone.key(),
            "composer": COMPOSER_VERSION,
            "per_outfit": per_outfit,
            "seed": seed,
            "categories": sorted(categories),
            "data": [
                str(data.root.resolve()),
                (data.root / "outfits.csv").stat().st_size,
                (data.root / "products.csv").stat().st_size,
            ],
        },
        sort_keys=True,
    )
    return f"outfits-{backbone.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def plan_compositions(
    data: OutfitData, categories: Sequence[str], per_outfit: int, seed: int
) -> list[dict[str, Any]]:
    """Which item each composition holds out, and its composer seed (deterministic)."""
    known = set(categories)
    rng = np.random.default_rng(seed)
    plans: list[dict[str, Any]] = []
    for outfit in sorted(data.outfits, key=lambda o: (len(o), o)):
        items = data.outfits[outfit]
        targets = [p for p in items if data.products[p].stl_category in known]
        if not targets:
            continue
        chosen = rng.permutation(len(targets))[:per_outfit]
        for k in chosen:
            target = targets[int(k)]
            plans.append(
                {
                    "outfit": outfit,
                    "target": target,
                    "category": data.products[target].stl_category,
                    "others": [p for p in items if p != target],
                    "seed": int(rng.integers(2**31)),
                }
            )
    return plans


def build_outfit_cache(
    data: OutfitData,
    backbone: Backbone,
    cache_root: Path,
    categories: Sequence[str],
    per_outfit: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    engine: str = "auto",
) -> tuple[FeatureCache, float]:
    """The complete outfit cache (computing what is missing) and the seconds spent computing."""

    def make() -> dict[str, Any]:
        plans = plan_compositions(data, categories, per_outfit, seed)
        products = sorted(data.products)
        row = {p: i for i, p in enumerate(products)}
        examples = [
            {
                "outfit": plan["outfit"],
                "scene": f"outfit:{plan['outfit']}",
                "product": row[plan["target"]],
                "category": plan["category"],
                "crop": i,
                "others": [row[p] for p in plan["others"]],
                "seed": plan["seed"],
            }
            for i, plan in enumerate(plans)
        ]
        return {
            "backbone": backbone.describe(),
            "data": str(data.root.resolve()),
            "composer_version": COMPOSER_VERSION,
            "per_outfit": per_outfit,
            "seed": seed,
            "examples": examples,
            "products": products,
            "product_categories": [data.products[p].stl_category for p in products],
            "problems": dict(data.problems),
        }

    path = Path(cache_root) / outfit_cache_key(backbone, data, categories, per_outfit, seed)
    meta = cache_meta(path, make)
    examples, products = meta["examples"], meta["products"]
    log.info("outfit cache %s: %d compositions, %d products", path, len(examples), len(products))

    @functools.lru_cache(maxsize=4096)  # a product is in ~5 outfits: cut it out once
    def item(p: int) -> Cutout:
        return cutout(rgb(data.image_path(products[p])))

    def composition(i: int) -> Composition:
        ex = examples[i]
        return compose_cutouts([item(p) for p in ex["others"]], ex["seed"])

    def scene(i: int) -> Image.Image:  # the boxes are kept as the backbone's input is made
        c = composition(i)
        examples[i]["boxes"] = [[round(v, 5) for v in b] for b in c.normalized_boxes()]
        return c.image

    builder = ChunkBuilder(path, backbone, batch_size, engine)
    products_in = (len(products), lambda i: rgb(data.image_path(products[i])))
    cache, spent = builder.fill_views(meta, OUTFIT_VIEWS, (len(examples), scene), products_in)
    missing = [i for i, ex in enumerate(examples) if "boxes" not in ex]
    for i in missing:  # compositions of chunks computed by an earlier run
        scene(i)
    if missing:
        write_json(path / "meta.json", meta, indent=1)
    return cache, spent
