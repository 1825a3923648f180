"""``ctl catalog set``: change products' attributes (stock, price, ...) from the command line.

Nothing is re-embedded and no index version is made: the attribute store gets one write, which
running services follow within their follow interval (``CTL_FOLLOW_INTERVAL_S``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from index.attributes import AttributesBusyError, parse_update
from index.config import IndexSettings
from index.store import IndexStore, IndexStoreError


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
