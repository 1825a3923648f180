"""Importing a shop's product table: new products and changed images embedded, attributes set,
one new index version.

A table (CSV, JSON lines or Parquet, ``index/rows.py``) has the columns ``id, category, image``
(a file path, relative to the table's folder, or an http(s) URL) and any attribute columns:
``title, price, currency, url, brand, in_stock, popularity``, an ``attributes`` object (JSON
lines), and any other column as one key of the ``attributes`` map. An empty cell sets nothing.

Only products that are new, changed category, or whose image bytes changed (sha256, kept per
product in ``image-hashes.json`` beside the versions) are embedded; the others keep their
vectors. Every bad row is reported with its line and reason, and a table with bad rows applies
nothing unless ``skip_bad``. Images are fetched concurrently, URLs with retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.attributes import FIELDS, AttributesError, parse_update
from index.build import BuildError, current_groups, embed_catalog, group, load_image, regroup
from index.fetch import MAX_BYTES, FetchError, fetch
from index.rows import Row, RowError, read_rows
from index.store import IndexStore, InvalidProductIdError, check_product_id
from runtime.atomic import write_json
from runtime.encoder import Encoder
from runtime.progress import Progress

log = logging.getLogger(__name__)

COLUMNS = ("id", "category", "image")
HASHES_FILE = "image-hashes.json"


@dataclass(frozen=True)
class ImportRow:
    """One good row: a product, its image source and the attributes its cells set."""

    line: int
    id: str
    category: str
    image: str
    attributes: dict[str, Any]


class CatalogImportError(BuildError):
    """Bad rows (each with its line and reason); nothing was applied."""

    def __init__(self, errors: list[RowError]) -> None:
        shown = "; ".join(f"line {e.line}: {e.reason}" for e in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        super().__init__(
            f"{len(errors)} bad rows, nothing applied (--skip-bad applies the others): "
            f"{shown}{more}"
        )
        self.errors = errors


@dataclass
class ImportReport:
    """What an import did."""

    version: str
    rows: int
    added: list[str] = field(default_factory=list)
    reembedded: list[str] = field(default_factory=list)
    kept: int = 0
    removed: list[str] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    attributes_revision: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "rows": self.rows,
            "added": len(self.added),
            "reembedded": len(self.reembedded),
            "kept": self.kept,
            "removed": len(self.removed),
            "removed_ids": self.removed,
            "errors": [{"line": e.line, "reason": e.reason} for e in self.errors],
            "attributes_revision": self.attributes_revision,
            "seconds": round(self.seconds, 2),
        }


def parse_row(row: Row, categories: set[str]) -> ImportRow | RowError:
    """A table row as an :class:`ImportRow`, or the reason it is bad."""
    values = row.values
    pid = str(values["id"]).strip()
    try:
        check_product_id(pid)
    except InvalidProductIdError as exc:
        return RowError(row.line, str(exc))
    category = str(values["category"]).strip()
    if category not in categories:
        return RowError(row.line, f"unknown category {category[:64]!r}")
    raw: dict[str, Any] = {}
    for key, value in values.items():
        if key in COLUMNS or value is None or (isinstance(value, str) and not value.strip()):
            continue
        if key == "attributes" and isinstance(value, dict):
            raw.setdefault("attributes", {}).update(value)
        elif key in FIELDS:
            raw[key] = value
        else:
            raw.setdefault("attributes", {})[key.removeprefix("attributes.")] = value
    try:
        update = parse_update(raw)
    except AttributesError as exc:
        return RowError(row.line, str(exc))
    return ImportRow(row.line, pid, category, str(values["image"]).strip(), update)


def read_table(
    rows: Iterable[Row | RowError], categories: set[str]
) -> tuple[list[ImportRow], list[RowError], set[str]]:
    """The good rows, the bad ones (a repeated id is bad on its later lines), and every id the
    table names, in good rows or bad (``sync`` removes only products it does not name)."""
    good: list[ImportRow] = []
    bad: list[RowError] = []
    first: dict[str, int] = {}
    named: set[str] = set()
    for item in rows:
        if isinstance(item, Row) and item.values.get("id") is not None:
            named.add(str(item.values["id"]).strip())
        parsed = parse_row(item, categories) if isinstance(item, Row) else item
        if isinstance(parsed, ImportRow) and parsed.id in first:
            parsed = RowError(parsed.line, f"id {parsed.id} repeats line {first[parsed.id]}")
        if isinstance(parsed, RowError):
            bad.append(parsed)
        else:
            first[parsed.id] = parsed.line
            good.append(parsed)
    return good, bad, named


def image_bytes(source: str, base: Path, timeout: float, retries: int) -> bytes | str:
    """The bytes of an image path (relative to ``base``) or http(s) URL, or why not."""
    if source.startswith(("http://", "https://")):
        try:
            return fetch(source, timeout=timeout, retries=retries)
        except FetchError as exc:
            return f"image {source[:200]}: {exc}"
    try:
        path = Path(source) if Path(source).is_absolute() else base / source
        if not path.is_file():  # not a directory, a device or a pipe
            return f"image {source[:200]}: no such file"
        if path.stat().st_size > MAX_BYTES:
            return f"image {source[:200]}: over {MAX_BYTES} bytes"
        return path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return f"image {source[:200]}: {getattr(exc, 'strerror', None) or exc}"


def _stored_hashes(store: IndexStore) -> dict[str, str]:
    path = store.root / HASHES_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _stored_hash(store: IndexStore, hashes: dict[str, str], pid: str) -> str | None:
    """The sha256 of the image a product was embedded from (a stored JPEG is its source's
    bytes, so versions built before the hash file are compared through it)."""
    if pid in hashes:
        return hashes[pid]
    path = store.image_path(pid)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def import_catalog(
    store: IndexStore,
    encoder: Encoder,
    table: Path,
    *,
    sync: bool = False,
    skip_bad: bool = False,
    ann_threshold: int = 50_000,
    base_dir: Path | None = None,
    workers: int = 8,
    timeout: float = 10.0,
    retries: int = 3,
) -> ImportReport:
    """Import ``table`` (see the module docstring); CatalogImportError when rows are bad and
    not ``skip_bad``. ``base_dir``: where relative image paths start (the table's folder)."""
    started = time.perf_counter()
    base = base_dir if base_dir is not None else Path(table).parent
    good, bad, named = read_table(read_rows(Path(table), COLUMNS), set(encoder.categories))
    n_rows = len(good) + len(bad)
    if not n_rows:  # with --sync it would empty the catalog: surely not what was meant
        raise CatalogImportError([RowError(0, "the table has no rows")])
    current = store.categories_of() if store.current() else {}
    hashes = _stored_hashes(store)

    def load(row: ImportRow) -> tuple[bytes, str] | str:
        data = image_bytes(row.image, base, timeout, retries)
        if isinstance(data, str):
            return data
        digest = hashlib.sha256(data).hexdigest()
        if row.id not in current or digest != _stored_hash(store, hashes, row.id):
            loaded = load_image(data)  # only what will be embedded needs decoding
            if isinstance(loaded, str):
                return f"unreadable image {row.image[:200]}: {loaded}"
        return data, digest

    fetched: dict[str, tuple[bytes, str]] = {}
    with (
        ThreadPoolExecutor(workers) as pool,
        Progress(log, len(good), "reading images", "img") as progress,
    ):
        for n, (row, result) in enumerate(zip(good, pool.map(load, good), strict=True), 1):
            if isinstance(result, str):
                bad.append(RowError(row.line, result))
            else:
                fetched[row.id] = result
            progress.update(1, "read %d/%d images (%d bad rows)", n, len(good), len(bad))
    bad.sort(key=lambda e: e.line)
    if bad and not skip_bad:
        raise CatalogImportError(bad)
    rows = [r for r in good if r.id in fetched]
    if not rows and not sync:
        raise CatalogImportError(bad)
    report = ImportReport("", n_rows, errors=bad)
    with store.lock():
        groups = current_groups(store, encoder) if store.current() else {}
        hashes = _stored_hashes(store)
        where = {pid: c for c, g in groups.items() for pid in g.ids}
        embed = [
            r
            for r in rows
            if where.get(r.id) != r.category
            or fetched[r.id][1] != _stored_hash(store, hashes, r.id)
        ]
        drop = {r.id for r in embed if r.id in where}
        if sync:
            report.removed = sorted(set(where) - named)
            drop |= set(report.removed)
        ids, emb, skipped, _ = embed_catalog(
            encoder,
            [(r.id, fetched[r.id][0]) for r in embed],
            on_image=lambda pid, ld: store.put_image(pid, ld.image, ld.jpeg),
        )
        if skipped:  # decoded before; a file that changed under us
            raise BuildError(f"images became unreadable during the import: {skipped}")
        regroup(groups, drop, group(ids, emb, {r.id: r.category for r in embed}))
        groups = {c: g for c, g in groups.items() if g.ids}
        if not groups:
            raise BuildError("the import would leave the catalog empty")
        report.added = [r.id for r in embed if r.id not in where]
        report.reembedded = [r.id for r in embed if r.id in where]
        report.kept = len(rows) - len(embed)
        with store.attributes.writing() as write:
            rev, _ = write({r.id: r.attributes for r in rows}, False)
            if report.removed:
                rev, _ = write({pid: {} for pid in report.removed}, True)
            report.attributes_revision = rev
            if embed or report.removed:  # attributes alone need no index version
                report.version = store.publish(encoder.version, encoder.dim, groups, ann_threshold)
            else:
                report.version = store.current() or ""
        hashes |= {r.id: fetched[r.id][1] for r in rows}
        for pid in report.removed:
            hashes.pop(pid, None)
        write_json(store.root / HASHES_FILE, hashes)
    report.seconds = time.perf_counter() - started
    log.info(
        "imported %s: %d added, %d re-embedded, %d kept, %d removed, %d bad rows (%.1f s)",
        table,
        len(report.added),
        len(report.reembedded),
        report.kept,
        len(report.removed),
        len(bad),
        report.seconds,
    )
    return report
