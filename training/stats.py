"""``ctl data stats``: what a data directory holds and how much of it survives the CTL crop.

Image sizes come from the file headers only (no decoding), so this runs in seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.options import Options, option
from training.config import TrainingSettings
from training.crop import CropStats, PairCrops
from training.stl import STLData

log = logging.getLogger(__name__)

NO_CATEGORY = "(no category)"


@dataclass
class CategoryStats:
    pairs: int = 0
    pairs_with_images: int = 0
    catalog_with_images: int = 0
    crop_kept: int = 0


@dataclass
class DataStats:
    """The figures ``ctl data stats`` prints; ``as_dict`` is its ``--json`` output."""

    data: str
    domain: str
    pairs: int
    scenes: int
    scenes_with_image: int
    products: int
    products_with_image: int
    pairs_with_images: int
    catalog_products_with_images: int
    scene_images_on_disk: int
    categories: dict[str, CategoryStats] = field(default_factory=dict)
    crop: CropStats = field(default_factory=CropStats)

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["crop"] = self.crop.as_dict()
        return out


def compute_stats(data: STLData) -> DataStats:
    """Counts over pairs, images and categories, and the crop outcome of pairs with images."""
    scenes_on_disk = data.available_scenes()
    products_on_disk = set(data.available_products())
    scenes = {p.scene for p in data.pairs}
    products = {p.product for p in data.pairs}
    with_images = data.pairs_with_images()

    cats: dict[str, CategoryStats] = {}

    def cat(product: str) -> CategoryStats:
        return cats.setdefault(data.category(product) or NO_CATEGORY, CategoryStats())

    for pair in data.pairs:
        cat(pair.product).pairs += 1
    for product in products_on_disk:
        cat(product).catalog_with_images += 1
    crop, crops = CropStats(), PairCrops(data)
    for pair in with_images:
        reason = crops(pair).reason
        crop.add(reason)
        cat(pair.product).pairs_with_images += 1
        cat(pair.product).crop_kept += reason == "ok"

    return DataStats(
        data=str(data.root),
        domain=data.domain,
        pairs=len(data.pairs),
        scenes=len(scenes),
        scenes_with_image=len(scenes & scenes_on_disk),
        products=len(products),
        products_with_image=len(products & products_on_disk),
        pairs_with_images=len(with_images),
        catalog_products_with_images=len(products_on_disk),
        scene_images_on_disk=len(scenes_on_disk),
        categories=dict(sorted(cats.items(), key=lambda kv: (-kv[1].pairs_with_images, kv[0]))),
        crop=crop,
    )


def render(stats: DataStats) -> str:
    """A human-readable report."""
    rows = [
        ("pairs", stats.pairs),
        ("scenes in pairs", stats.scenes),
        ("  with an image", stats.scenes_with_image),
        ("products in pairs", stats.products),
        ("  with an image", stats.products_with_image),
        ("pairs with both images", stats.pairs_with_images),
        ("scene images on disk", stats.scene_images_on_disk),
        ("catalog products with images", stats.catalog_products_with_images),
    ]
    lines = [f"data: {stats.data} (domain {stats.domain})", ""]
    lines += [f"{name:<32}{value:>10,}" for name, value in rows]
    width = max([len("category"), *map(len, stats.categories)])
    header = (
        f"{'category':<{width}}  {'pairs':>8}  {'w/ images':>9}  {'crop kept':>9}  {'catalog':>8}"
    )
    lines += ["", header, "-" * len(header)]
    for name, c in stats.categories.items():
        lines.append(
            f"{name:<{width}}  {c.pairs:>8,}  {c.pairs_with_images:>9,}  {c.crop_kept:>9,}"
            f"  {c.catalog_with_images:>8,}"
        )
    total = stats.crop.kept + sum(stats.crop.dropped.values())
    lines += ["", f"crop (pairs with both images): kept {stats.crop.kept:,} of {total:,}"]
    lines += [f"  dropped {r}: {n:,}" for r, n in sorted(stats.crop.dropped.items())]
    return "\n".join(lines)


class StatsOptions(Options, prog="ctl data stats", settings=TrainingSettings):
    """Counts of pairs, images, crops and drops."""

    data: Path = option(help="data directory", setting="data_dir")
    domain: str = option("fashion", "which STL pairs", choices=("fashion", "home"))
    as_json: bool = option(False, "print JSON instead of a table", flag="--json")


def main(argv: Sequence[str]) -> int:
    args = StatsOptions.parse(argv)
    try:
        data = STLData.load(args.data, args.domain)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    stats = compute_stats(data)
    print(json.dumps(stats.as_dict(), indent=2) if args.as_json else render(stats))
    return 0
