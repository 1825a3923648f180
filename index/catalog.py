"""Where a data directory keeps its product catalog: ``images/products/ID.jpg`` and
``{domain}-cat.json`` (product -> ``"A|B|Leaf"``; the leaf is the category).

The index reads this layout itself so that it depends on no training code (layering: the
index sits below training and the CLI, and the torch-free API image carries no training/).
"""

from __future__ import annotations

import json
from pathlib import Path


def product_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "images" / "products"


def product_path(data_dir: Path, product_id: str) -> Path:
    return product_dir(data_dir) / f"{product_id}.jpg"


def read_categories(data_dir: Path, domain: str = "fashion") -> dict[str, str]:
    """product id -> leaf category from ``{domain}-cat.json``; a clear error when it is absent."""
    path = Path(data_dir) / f"{domain}-cat.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} an STL data directory?")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of product -> category path")
    return {str(k): str(v).rsplit("|", 1)[-1].strip() for k, v in raw.items()}
