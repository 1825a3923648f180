"""Stylist outfits (``../shared/mango-outfits``): products, outfits, photos, STL categories.

Layout: ``products.csv`` (``product``, ``stl_category`` (empty: none), then retailer attributes
``category, aggregated_family, family, type, colour, fabric, sex, age, line``), ``outfits.csv``
(``outfit``, ``product``; one row per item) and ``images/ID.jpg``. Items of one outfit go
together: the same signal as an STL pair, in product-to-product form and ~40x more of it.

Loading never fails on bad content: malformed rows, unknown products, duplicate items and
missing photos are counted (``OutfitData.problems``) and skipped; outfits left with fewer than
two items with a photo are dropped and counted too.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.split import split_scenes

log = logging.getLogger(__name__)

ATTRIBUTES = (
    "category",
    "aggregated_family",
    "family",
    "type",
    "colour",
    "fabric",
    "sex",
    "age",
    "line",
)


def outfits_available(root: Path | None) -> bool:
    """Whether ``root`` looks like an outfits directory (both CSV files present)."""
    return (
        root is not None and (root / "products.csv").is_file() and (root / "outfits.csv").is_file()
    )


@dataclass(frozen=True)
class Product:
    """A catalog product: its STL leaf category (``""`` when none) and retailer attributes."""

    id: str
    stl_category: str
    attributes: Mapping[str, str]


@dataclass
class OutfitData:
    """Outfits (id -> product ids with a photo, in file order) over products with photos."""

    root: Path
    products: dict[str, Product]
    outfits: dict[str, list[str]]
    problems: Counter[str] = field(default_factory=Counter)

    @classmethod
    def load(cls, root: Path | str) -> OutfitData:
        root = Path(root)
        problems: Counter[str] = Counter()
        products = _read_products(root / "products.csv", problems)
        on_disk = {p.stem for p in (root / "images").glob("*.jpg")}
        missing = {p for p in products if p not in on_disk}
        problems["products_missing_image"] += len(missing)
        outfits = _read_outfits(root / "outfits.csv", products, missing, problems)
        for name, n in sorted(problems.items()):
            if n:
                log.warning("%s: %s: %d", root, name, n)
        return cls(root, {k: v for k, v in products.items() if k not in missing}, outfits, problems)

    def image_path(self, product: str) -> Path:
        return self.root / "images" / f"{product}.jpg"

    def split(
        self, seed: int, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
    ) -> dict[str, str]:
        """Outfit -> ``"train"|"val"|"test"``, by outfit (no outfit in two splits)."""
        return split_scenes(self.outfits, fractions, seed)

    def pairs(self) -> int:
        """Unordered item pairs over all outfits."""
        return sum(len(items) * (len(items) - 1) // 2 for items in self.outfits.values())

    def stats(self) -> dict[str, Any]:
        """Counts for ``ctl data stats --outfits``."""
        sizes = Counter(len(v) for v in self.outfits.values())
        used = {p for items in self.outfits.values() for p in items}
        cats = Counter(self.products[p].stl_category or "(none)" for p in used)
        return {
            "outfits": str(self.root),
            "products_with_image": len(self.products),
            "products_in_outfits": len(used),
            "outfits_kept": len(self.outfits),
            "items": sum(len(v) for v in self.outfits.values()),
            "item_pairs": self.pairs(),
            "outfit_sizes": dict(sorted(sizes.items())),
            "stl_categories": dict(cats.most_common()),
            "problems": dict(sorted(self.problems.items())),
        }


def _read_products(path: Path, problems: Counter[str]) -> dict[str, Product]:
    products: dict[str, Product] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            pid = (row.get("product") or "").strip()
            if not pid or None in row or any(v is None for v in row.values()):
                problems["products_bad_rows"] += 1
                continue
            if pid in products:
                problems["products_duplicate"] += 1
                continue
            attrs = {a: (row.get(a) or "").strip() for a in ATTRIBUTES}
            products[pid] = Product(pid, (row.get("stl_category") or "").strip(), attrs)
    return products


def _read_outfits(
    path: Path, products: Mapping[str, Product], missing: set[str], problems: Counter[str]
) -> dict[str, list[str]]:
    outfits: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            oid = (row.get("outfit") or "").strip()
            pid = (row.get("product") or "").strip()
            if not oid or not pid or None in row:
                problems["outfit_bad_rows"] += 1
                continue
            if pid not in products:
                problems["outfit_items_unknown_product"] += 1
                continue
            if pid in missing:
                problems["outfit_items_missing_image"] += 1
                continue
            items = outfits.setdefault(oid, [])
            if pid in items:
                problems["outfit_items_duplicate"] += 1
                continue
            items.append(pid)
    small = [o for o, items in outfits.items() if len(items) < 2]
    problems["outfits_under_2_items"] += len(small)
    for o in small:
        del outfits[o]
    return outfits


def render_stats(stats: Mapping[str, Any]) -> str:
    """A human-readable outfits report."""
    lines = [f"outfits: {stats['outfits']}", ""]
    for key in ("products_with_image", "products_in_outfits", "outfits_kept", "items"):
        lines.append(f"{key.replace('_', ' '):<32}{stats[key]:>10,}")
    lines.append(f"{'item pairs':<32}{stats['item_pairs']:>10,}")
    lines += ["", "products in outfits by STL category:"]
    lines += [f"  {c:<30}{n:>10,}" for c, n in stats["stl_categories"].items()]
    lines += [
        "",
        "outfit sizes: " + ", ".join(f"{k}: {v}" for k, v in stats["outfit_sizes"].items()),
    ]
    lines += ["", "problems (skipped, never fatal):"]
    lines += [f"  {k:<30}{v:>10,}" for k, v in stats["problems"].items()] or ["  none"]
    return "\n".join(lines)
