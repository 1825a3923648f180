"""Reading Shop The Look data in its released formats, and where its images live.

Layout of a data directory (that of ``../shared/stl-fashion`` and of what ``ctl download``
writes): ``fashion.json`` (pairs, JSON lines), ``fashion-cat.json`` (product -> "A|B|Leaf"),
``images/scenes/SIG.jpg``, ``images/products/SIG.jpg``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from index import catalog
from runtime.decode import decode_image

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]
DROPPED_CATEGORIES = frozenset({"Dresses"})
"""The paper drops dresses: the product covers most of the outfit, so no scene is left."""


@dataclass(frozen=True)
class Pair:
    """One STL pair: a product seen in a scene at ``bbox`` (left, top, right, bottom in [0, 1])."""

    scene: str
    product: str
    bbox: BBox


def rgb(path: Path, min_size: int = 0) -> Image.Image:
    """The image file at ``path`` decoded to RGB by the decoder of every path (upright, the
    default pixel limit; ``runtime.decode.DecodeError`` when it cannot be). ``min_size``: the
    model input, when the whole photo goes to the model (a big JPEG then decodes at reduced
    scale, as the service decodes it); 0 for photos that are cropped first."""
    return decode_image(path.read_bytes(), min_size=min_size, name=path.name)


def load_pairs(path: Path) -> list[Pair]:
    """Read a pairs file (JSON lines of ``{"product", "scene", "bbox"}``); bad lines are logged."""
    pairs: list[Pair] = []
    bad = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
                coords = [float(v) for v in obj["bbox"]]
                if len(coords) != 4:
                    raise ValueError("bbox must have 4 numbers")
                left, top, right, bottom = coords
                pairs.append(
                    Pair(str(obj["scene"]), str(obj["product"]), (left, top, right, bottom))
                )
            except (ValueError, KeyError, TypeError) as exc:
                bad += 1
                log.warning("%s:%d: skipping malformed pair (%s)", path, lineno, exc)
    if bad:
        log.warning("%s: %d malformed lines skipped", path, bad)
    return pairs


@dataclass
class STLData:
    """A data directory: its pairs, product categories and image paths."""

    root: Path
    domain: str = "fashion"
    pairs: list[Pair] = field(default_factory=list)
    categories: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, domain: str = "fashion") -> STLData:
        """Load ``{domain}.json`` and ``{domain}-cat.json`` (the index's reader) from ``root``."""
        root = Path(root)
        pairs_file = root / f"{domain}.json"
        if not pairs_file.is_file():
            raise FileNotFoundError(f"{pairs_file} not found: is {root} an STL data directory?")
        categories = catalog.read_categories(root, domain)
        return cls(root, domain, load_pairs(pairs_file), categories)

    @property
    def scene_dir(self) -> Path:
        return self.root / "images" / "scenes"

    @property
    def product_dir(self) -> Path:
        return catalog.product_dir(self.root)

    def scene_path(self, sig: str) -> Path:
        return self.scene_dir / f"{sig}.jpg"

    def product_path(self, sig: str) -> Path:
        return catalog.product_path(self.root, sig)

    def available_products(self) -> list[str]:
        """Signatures of the product images on disk that have a category, sorted."""
        if not self.product_dir.is_dir():
            return []
        sigs = (p.stem for p in self.product_dir.glob("*.jpg"))
        return sorted(s for s in sigs if s in self.categories)

    def available_scenes(self) -> set[str]:
        if not self.scene_dir.is_dir():
            return set()
        return {p.stem for p in self.scene_dir.glob("*.jpg")}

    def pairs_with_images(self) -> list[Pair]:
        """Pairs whose scene and product images both exist and whose product has a category."""
        scenes = self.available_scenes()
        products = set(self.available_products())
        return [p for p in self.pairs if p.scene in scenes and p.product in products]

    def category(self, product: str) -> str | None:
        return self.categories.get(product)

    def category_names(self) -> list[str]:
        """Leaf categories kept for training (dresses dropped), sorted."""
        return sorted(set(self.categories.values()) - DROPPED_CATEGORIES)
