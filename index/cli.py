"""``ctl index build|add|remove|info``: the catalog index from the command line.

Each prints a JSON report on stdout (the command's result) and returns 1 with a one-line
error on stderr when the input is bad.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from index.build import BuildError, NewProduct, add_products, build_index, remove_products
from index.config import IndexSettings
from index.store import IndexStore, IndexStoreError
from runtime.artifacts import ArtifactError
from runtime.encoder import OnnxEncoder

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def _parser(prog: str, description: str, settings: IndexSettings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--artifacts",
        type=Path,
        default=settings.artifacts_dir,
        help="artifacts directory from 'ctl export' (default: %(default)s)",
    )
    return p


def encoder_options(p: argparse.ArgumentParser, settings: IndexSettings) -> None:
    p.add_argument(
        "--ann-threshold",
        type=int,
        default=settings.ann_threshold,
        help="categories with at least this many products get an IVF index (default: %(default)s)",
    )
    p.add_argument("--device", default=settings.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=settings.inference_threads)


def open_store(args: argparse.Namespace) -> tuple[IndexStore, OnnxEncoder]:
    """The index store and the encoders of ``--artifacts`` (on ``--device``, ``--threads``)."""
    encoder = OnnxEncoder.from_artifacts(args.artifacts, args.device, args.threads)
    return IndexStore.for_artifacts(args.artifacts), encoder


def _run(
    p: argparse.ArgumentParser,
    argv: list[str],
    action: Callable[[argparse.Namespace], dict[str, object]],
) -> int:
    """Parse ``argv``, run ``action`` on the options and print its JSON report, or the error."""
    args = p.parse_args(argv)
    try:
        result = action(args)
    except (ArtifactError, BuildError, IndexStoreError, FileNotFoundError) as exc:
        sys.stderr.write(f"{p.prog}: error: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


def build_main(argv: list[str]) -> int:
    """Embed every product image of a data directory into a new index version."""
    settings = IndexSettings()
    p = _parser("ctl index build", build_main.__doc__ or "", settings)
    p.add_argument("--data", type=Path, default=settings.data_dir, help="STL data directory")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--work-dir",
        type=Path,
        default=settings.work_dir,
        help="where embedding chunks are cached so that a killed build resumes",
    )
    encoder_options(p, settings)

    def run(a: argparse.Namespace) -> dict[str, object]:
        cache = a.work_dir / "index-embeddings"
        return build_index(*open_store(a), a.data, cache, a.batch_size, a.ann_threshold).to_dict()

    return _run(p, argv, run)


def _image_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def _products_from_json(path: Path) -> list[NewProduct]:
    try:
        raw = json.loads(path.read_text())
        return [NewProduct(str(o["id"]), str(o["category"]), Path(o["image"])) for o in raw]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BuildError(
            f"{path}: expected a JSON list of {{'id', 'category', 'image'}} objects ({exc})"
        ) from exc


def add_main(argv: list[str]) -> int:
    """Add products (id = image file name without extension) as a new index version."""
    settings = IndexSettings()
    p = _parser("ctl index add", add_main.__doc__ or "", settings)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, nargs="+", help="image files or directories")
    src.add_argument("--json", type=Path, help="a JSON list of {id, category, image}")
    p.add_argument("--category", help="category of every --images product")
    encoder_options(p, settings)

    def run(args: argparse.Namespace) -> dict[str, object]:
        if args.images and not args.category:
            p.error("--images needs --category")
        if args.json:
            products = _products_from_json(args.json)
        else:
            files = _image_files(args.images)
            if not files:
                raise BuildError(f"no images found in {args.images}")
            products = [NewProduct(f.stem, args.category, f) for f in files]
        return add_products(*open_store(args), products, args.ann_threshold).to_dict()

    return _run(p, argv, run)


def remove_main(argv: list[str]) -> int:
    """Remove products by id as a new index version."""
    settings = IndexSettings()
    p = _parser("ctl index remove", remove_main.__doc__ or "", settings)
    p.add_argument("ids", nargs="+", help="product ids")
    encoder_options(p, settings)
    return _run(
        p, argv, lambda a: remove_products(*open_store(a), a.ids, a.ann_threshold).to_dict()
    )


def info_main(argv: list[str]) -> int:
    """Show the current index version and the others kept on disk."""
    settings = IndexSettings()
    p = _parser("ctl index info", info_main.__doc__ or "", settings)

    def run(args: argparse.Namespace) -> dict[str, object]:
        store = IndexStore.for_artifacts(args.artifacts)
        versions = []
        for v in store.versions():
            man = store.manifest(v)
            versions.append(
                {
                    "version": v,
                    "model_version": man["model_version"],
                    "created": man["created"],
                    "products": man["count"],
                    "categories": {
                        c: {"count": i["count"], "kind": i["kind"]}
                        for c, i in man["categories"].items()
                    },
                }
            )
        return {"root": str(store.root), "current": store.current(), "versions": versions}

    return _run(p, argv, run)
