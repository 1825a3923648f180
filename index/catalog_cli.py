"""``ctl catalog set|import``: a shop's catalog from the command line.

``set`` changes one product's attributes (stock, price, ...): nothing is re-embedded and no
index version is made; the attribute store gets one write, which running services follow within
their follow interval (``CTL_FOLLOW_INTERVAL_S``). ``import`` reads a product table
(``index/catalog_import.py``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from index.attributes import AttributesBusyError, parse_update
from index.build import BuildError
from index.catalog_import import CatalogImportError, import_catalog
from index.cli import open_store
from index.config import EncoderOptions, IndexOptions
from index.rows import TableError
from index.store import IndexStore, IndexStoreError
from runtime.artifacts import ArtifactError
from runtime.options import option


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` words as an attribute update: values are JSON where they parse as JSON
    (``49.9``, ``false``, ``null``), text otherwise; ``attributes.KEY=value`` sets one key of
    the ``attributes`` map. ValueError naming a word without ``=``."""
    update: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not key=value")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, dict | list):
            value = text
        if key.startswith("attributes."):
            update.setdefault("attributes", {})[key.removeprefix("attributes.")] = value
        else:
            update[key] = value
    return update


class SetOptions(IndexOptions, prog="ctl catalog set"):
    """Set attributes of one product: ``ctl catalog set ID in_stock=false price=49.9``."""

    id: str = option(help="a product id of the current index version", positional=True)
    assignments: list[str] = option(
        help="title, price, currency, url, brand, in_stock, popularity, attributes.KEY "
        "(value null: back to the default)",
        positional=True,
        metavar="key=value",
    )


def set_main(argv: list[str]) -> int:
    """``ctl catalog set``."""
    args = SetOptions.parse(argv)
    store = IndexStore.for_artifacts(args.artifacts)
    try:
        update = parse_update(parse_assignments(args.assignments))
        if args.id not in store.categories_of():
            raise IndexStoreError(f"no product with id {args.id!r} in the current index version")
        revision, stored = store.attributes.update({args.id: update})
    except (ValueError, IndexStoreError, AttributesBusyError, OSError) as exc:
        sys.stderr.write(f"ctl catalog set: error: {exc}\n")
        return 1
    result = {"id": args.id, "revision": revision, "attributes": stored[args.id]}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


class CatalogImportOptions(EncoderOptions, prog="ctl catalog import"):
    """Import a product table (CSV, JSON lines, Parquet: id, category, image, attributes)."""

    table: Path = option(help="a .csv, .jsonl or .parquet file", positional=True)
    sync: bool = option(False, "also remove products the table lacks")
    skip_bad: bool = option(False, "apply the good rows of a bad table")
    workers: int = option(8, "concurrent image reads and fetches")
    retries: int = option(3, "retries of a failed image URL")
    timeout: float = option(10.0, "seconds per image request")


def import_main(argv: list[str]) -> int:
    """``ctl catalog import``."""
    args = CatalogImportOptions.parse(argv)
    try:
        store, encoder = open_store(args)
        report = import_catalog(
            store,
            encoder,
            args.table,
            sync=args.sync,
            skip_bad=args.skip_bad,
            ann_threshold=args.ann_threshold,
            workers=args.workers,
            timeout=args.timeout,
            retries=args.retries,
        )
    except CatalogImportError as exc:
        for error in exc.errors:
            sys.stderr.write(f"{args.table}:{error.line}: {error.reason}\n")
        n = len(exc.errors)
        sys.stderr.write(f"ctl catalog import: error: {n} bad rows, nothing applied\n")
        return 1
    except (ArtifactError, BuildError, IndexStoreError, TableError, AttributesBusyError) as exc:
        sys.stderr.write(f"ctl catalog import: error: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0
