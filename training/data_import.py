"""``ctl data import``: a shop's own looks and catalog as a data directory every step reads.

Two tables (CSV, JSON lines or Parquet; ``index.rows``):

- looks: ``scene`` (an image path or http(s) URL), ``product`` (its id), ``bbox`` as
  ``l,t,r,b`` in [0, 1], or in pixels with the image's size in ``width`` and ``height``;
- products: ``id``, ``category`` (a leaf, or a path ``A|B|Leaf``), ``image`` (path or URL).

Relative paths are relative to the table's folder. The images are fetched as ``ctl download``
fetches them (concurrently, with retries, each fully decoded; a rerun skips what is there) and
stored as JPEG. Every bad row (unreadable, a box outside the image or of zero area, an unknown
product, an image that does not decode, ...) is reported with its file, line and reason, in
``DIR/import-errors.jsonl`` too; the good rows make ``fashion.json``, ``fashion-cat.json`` and
``images/`` (README, "Data layout"), and ``scenes.json`` maps each scene id to its source.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from index.rows import Row, TableError, read_rows
from runtime.atomic import write_bytes, write_json
from runtime.options import option
from training.download import (
    SIGNATURE,
    Fetcher,
    FetchOptions,
    Job,
    download,
    image_path,
)

log = logging.getLogger(__name__)

ERRORS_FILE = "import-errors.jsonl"
LOOK_COLUMNS = ("scene", "product", "bbox")
PRODUCT_COLUMNS = ("id", "category", "image")
EDGE = 1e-6
"""How far past the image's edge (as a share of its size) a box may reach and be clipped:
rounding, not a box outside the image."""
BBox = tuple[float, float, float, float]


class BadRow(ValueError):
    """A row that cannot be imported; the message is the reason shown beside its line."""


@dataclass(frozen=True)
class Problem:
    """A bad row: which table (``looks`` or ``products``), its line and why."""

    table: str
    line: int
    reason: str


@dataclass(frozen=True)
class Product:
    line: int
    category: str
    source: str


@dataclass(frozen=True)
class Look:
    line: int
    scene: str  # the scene's id: its file is images/scenes/ID.jpg
    product: str
    box: BBox  # in [0, 1]


def source_url(value: Any, folder: Path) -> str:
    """An http(s) URL as given, or a path (relative to ``folder``) as a file URL."""
    text = str(value).strip()
    if text.startswith(("http://", "https://")):
        return text
    if "://" in text:
        raise BadRow(f"{text[:80]!r} is neither a file path nor an http(s) URL")
    path = Path(text).expanduser()
    return (path if path.is_absolute() else folder / path).resolve().as_uri()


def scene_id(source: str) -> str:
    """A stable id per scene source, so that a rerun finds the scenes it fetched before."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:24]


def parse_box(value: Any) -> BBox:
    """Four finite numbers from ``"l,t,r,b"`` (brackets allowed) or a list of four."""
    parts = value.strip(" []()").split(",") if isinstance(value, str) else value
    try:
        numbers = [float(v) for v in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
        raise BadRow(f"bbox {str(value)[:60]!r} is not four numbers l,t,r,b")
    left, top, right, bottom = numbers
    return left, top, right, bottom


def check_box(box: BBox) -> BBox:
    """A box in [0, 1] with an area (clipped by at most ``EDGE``), or ``BadRow`` saying why."""
    if min(box) < -EDGE or max(box) > 1 + EDGE:
        raise BadRow(f"box {_fmt(box)} is outside the image (in [0, 1], or give width, height)")
    left, top, right, bottom = (min(max(v, 0.0), 1.0) for v in box)
    if right <= left or bottom <= top:
        raise BadRow(f"box {_fmt(box)} has zero area (right <= left or bottom <= top)")
    return left, top, right, bottom


def _fmt(box: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in box) + "]"


def _size(row: Row) -> tuple[float, float] | None:
    """The image size a row gives for its pixel box (``width``, ``height``), if any."""
    w, h = row.values.get("width"), row.values.get("height")
    if (w is None or str(w).strip() == "") and (h is None or str(h).strip() == ""):
        return None
    try:
        width, height = float(w), float(h)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        width = height = math.nan
    if not (width > 0 and height > 0 and math.isfinite(width * height)):
        raise BadRow(f"width {w!r} and height {h!r} must both be positive numbers")
    return width, height


def read_products(path: Path, problems: list[Problem]) -> dict[str, Product]:
    """The products table's good rows by id; bad ones go to ``problems``."""
    products: dict[str, Product] = {}
    for row in read_rows(path, PRODUCT_COLUMNS):
        try:
            if not isinstance(row, Row):
                raise BadRow(row.reason)
            pid = str(row.values["id"]).strip()
            if not SIGNATURE.fullmatch(pid):
                raise BadRow(
                    f"product id {pid[:40]!r} is not 1-128 of A-Z a-z 0-9 . _ - "
                    "(not starting with a dot)"
                )
            if pid in products:
                raise BadRow(f"duplicate product {pid} (first on line {products[pid].line})")
            source = source_url(row.values["image"], path.parent)
            products[pid] = Product(row.line, str(row.values["category"]).strip(), source)
        except BadRow as exc:
            problems.append(Problem("products", row.line, str(exc)))
    return products


def read_looks(
    path: Path, products: dict[str, Product], problems: list[Problem]
) -> tuple[list[Look], dict[str, str]]:
    """The looks table's good rows (boxes in [0, 1], checked) and each scene id's source."""
    looks: list[Look] = []
    sources: dict[str, str] = {}
    for row in read_rows(path, LOOK_COLUMNS):
        try:
            if not isinstance(row, Row):
                raise BadRow(row.reason)
            pid = str(row.values["product"]).strip()
            if pid not in products:
                raise BadRow(
                    f"unknown product {pid[:40]!r} (none of the products table's good rows)"
                )
            source = source_url(row.values["scene"], path.parent)
            box, size = parse_box(row.values["bbox"]), _size(row)
            if size is not None:  # in pixels of a width x height image: as shares of it
                box = (box[0] / size[0], box[1] / size[1], box[2] / size[0], box[3] / size[1])
            box = check_box(box)
            sid = scene_id(source)
            sources[sid] = source
            looks.append(Look(row.line, sid, pid, box))
        except BadRow as exc:
            problems.append(Problem("looks", row.line, str(exc)))
    return looks, sources


def as_jpeg(path: Path) -> None:
    """Re-encode a fetched image that is not a JPEG (the layout's ``.jpg``, served as
    image/jpeg)."""
    with Image.open(path) as im:
        if im.format == "JPEG":
            return
        buf = io.BytesIO()
        im.convert("RGB").save(buf, "JPEG", quality=95)
    write_bytes(path, buf.getvalue())


def fetched(looks: list[Look], failed: dict[Job, str]) -> tuple[list[Look], list[Problem]]:
    """The looks whose scene and product images were fetched; a problem for each other."""
    failed_scenes = {j.sig: reason for j, reason in failed.items() if j.kind == "scenes"}
    failed_products = {j.sig for j in failed if j.kind == "products"}
    kept, problems = [], []
    for look in looks:
        if look.scene in failed_scenes:
            reason = f"unreadable scene image: {failed_scenes[look.scene]}"
            problems.append(Problem("looks", look.line, reason))
        elif look.product in failed_products:
            reason = f"product {look.product}'s image is unreadable"
            problems.append(Problem("looks", look.line, reason))
        else:
            kept.append(look)
    return kept, problems


def import_data(
    looks_file: Path, products_file: Path, out: Path, fetcher: Fetcher, workers: int = 16
) -> tuple[list[Look], dict[str, Product], list[Problem], Counter[str]]:
    """Read both tables, fetch the images, write the data directory; returns the looks and
    products imported, every problem, and the fetch counts."""
    problems: list[Problem] = []
    products = read_products(products_file, problems)
    looks, sources = read_looks(looks_file, products, problems)
    jobs = [Job("scenes", sid, url) for sid, url in sources.items()]
    jobs += [Job("products", pid, p.source) for pid, p in products.items()]
    log.info("%d images to check or fetch into %s", len(jobs), out)
    counts, failures = download(jobs, fetcher, workers)
    failed = {o.job: f"{o.reason} {o.detail}".strip() for o in failures}
    for job, reason in failed.items():
        if job.kind == "products":
            line = products.pop(job.sig).line
            problems.append(Problem("products", line, f"unreadable image: {reason}"))
    kept, late = fetched(looks, failed)
    for job in jobs:
        if job not in failed:
            as_jpeg(image_path(out, job))
    problems = sorted(problems + late, key=lambda p: (p.table, p.line))
    pairs = "".join(
        json.dumps({"product": k.product, "scene": k.scene, "bbox": [round(v, 6) for v in k.box]})
        + "\n"
        for k in kept
    )
    write_bytes(out / "fashion.json", pairs.encode("utf-8"))
    write_json(out / "fashion-cat.json", {pid: p.category for pid, p in products.items()})
    write_json(out / "scenes.json", {k.scene: sources[k.scene] for k in kept})
    errors = "".join(json.dumps(p.__dict__) + "\n" for p in problems)
    write_bytes(out / ERRORS_FILE, errors.encode("utf-8"))
    return kept, products, problems, counts


def render_summary(
    kept: Sequence[Look],
    products: dict[str, Product],
    problems: Sequence[Problem],
    counts: Counter[str],
    names: dict[str, str],
    out: Path,
    shown: int = 50,
) -> str:
    """What was imported and every bad row (the first ``shown`` of them; all in the file)."""
    lines = [
        f"import: {len(kept)} looks of {len({k.scene for k in kept})} scenes, "
        f"{len(products)} products; images: ok {counts['ok']}, skipped {counts['skipped']} "
        f"(already present), failed {counts['failed']}; {len(problems)} bad rows"
    ]
    lines += [f"  {names[p.table]}:{p.line}: {p.reason}" for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f"  ... and {len(problems) - shown} more")
    if problems:
        lines.append(f"bad rows listed in {out / ERRORS_FILE}")
    lines.append(f"what survives cropping: ctl data stats --data {out}")
    return "\n".join(lines)


class ImportOptions(FetchOptions, prog="ctl data import"):
    """A shop's looks and products as a data directory."""

    looks: Path = option(help="scene, product, bbox table")
    products: Path = option(help="id, category, image table")
    out: Path = option(help="data directory to write")


def main(argv: Sequence[str]) -> int:
    args = ImportOptions.parse(argv)
    out: Path = args.out
    fetcher = Fetcher(out, timeout=args.timeout, retries=args.retries, backoff=args.backoff)
    try:
        kept, products, problems, counts = import_data(
            args.looks, args.products, out, fetcher, args.workers
        )
    except (TableError, OSError) as exc:
        log.error("ctl data import: %s", exc)
        return 2
    names = {"looks": str(args.looks), "products": str(args.products)}
    sys.stdout.write(render_summary(kept, products, problems, counts, names, out) + "\n")
    if not kept:
        log.error("ctl data import: no look survived; nothing to train on")
        return 1
    return 0
