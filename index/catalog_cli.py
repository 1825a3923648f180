"""``ctl catalog set|import``: a shop's catalog from the command line.

``set`` changes one product's attributes (stock, price, ...): nothing is re-embedded and no
index version is made; the attribute store gets one write, which running services follow within
their follow interval (``CTL_FOLLOW_INTERVAL_S``). ``import`` reads a product table
(``index/catalog_import.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from index.attributes import AttributesBusyError, parse_update
from index.build import BuildError
from index.catalog_import import CatalogImportError, import_catalog
from index.cli import encoder_options, open_store
from index.config import IndexSettings
from index.rows import TableError
from index.store import IndexStore, IndexStoreError
from runtime.artifacts import ArtifactError


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


def set_main(argv: list[str]) -> int:
    """Set attributes of one product: ``ctl catalog set ID in_stock=false price=49.9``."""
    settings = IndexSettings()
    p = argparse.ArgumentParser(prog="ctl catalog set", description=set_main.__doc__)
    p.add_argument("id", help="a product id of the current index version")
    p.add_argument(
        "assignments",
        nargs="+",
        metavar="key=value",
        help="title, price, currency, url, brand, in_stock, popularity, attributes.KEY "
        "(value null: back to the default)",
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        default=settings.artifacts_dir,
        help="artifacts directory (default: %(default)s)",
    )
    args = p.parse_args(argv)
    store = IndexStore.for_artifacts(args.artifacts)
    try:
        update = parse_update(parse_assignments(args.assignments))
        if args.id not in store.categories_of():
            raise IndexStoreError(f"no product with id {args.id!r} in the current index version")
        revision, stored = store.attributes.update({args.id: update})
    except (ValueError, IndexStoreError, AttributesBusyError, OSError) as exc:
        sys.stderr.write(f"{p.prog}: error: {exc}\n")
        return 1
    result = {"id": args.id, "revision": revision, "attributes": stored[args.id]}
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def import_main(argv: list[str]) -> int:
    """Import a product table (CSV, JSON lines, Parquet: id, category, image, attributes...)."""
    settings = IndexSettings()
    p = argparse.ArgumentParser(prog="ctl catalog import", description=import_main.__doc__)
    p.add_argument("table", type=Path, help="a .csv, .jsonl or .parquet file")
    p.add_argument(
        "--artifacts",
        type=Path,
        default=settings.artifacts_dir,
        help="artifacts directory (default: %(default)s)",
    )
    p.add_argument("--sync", action="store_true", help="also remove products the table lacks")
    p.add_argument("--skip-bad", action="store_true", help="apply the good rows of a bad table")
    p.add_argument("--workers", type=int, default=8, help="concurrent image reads and fetches")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed image URL")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per image request")
    encoder_options(p, settings)
    args = p.parse_args(argv)
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
        sys.stderr.write(f"{p.prog}: error: {len(exc.errors)} bad rows, nothing applied\n")
        return 1
    except (ArtifactError, BuildError, IndexStoreError, TableError, AttributesBusyError) as exc:
        sys.stderr.write(f"{p.prog}: error: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0
