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
from typing import TypeVar

from index.build import BuildError, NewProduct, add_products, build_index, remove_products
from index.config import EncoderOptions, IndexOptions
from index.store import IndexStore, IndexStoreError
from runtime.artifacts import ArtifactError
from runtime.encoder import OnnxEncoder
from runtime.options import option

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def open_store(args: EncoderOptions) -> tuple[IndexStore, OnnxEncoder]:
    """The index store and the encoders of ``--artifacts`` (on ``--device``, ``--threads``)."""
    encoder = OnnxEncoder.from_artifacts(args.artifacts, args.device, args.threads)
    return IndexStore.for_artifacts(args.artifacts), encoder


Opts = TypeVar("Opts", bound=IndexOptions)


def _run(
    cls: type[Opts],
    argv: list[str],
    action: Callable[[Opts, argparse.ArgumentParser], dict[str, object]],
) -> int:
    """Parse ``argv``, run ``action`` on the options and print its JSON report, or the error."""
    p = cls.parser()
    args = cls.from_namespace(p, p.parse_args(argv))
    try:
        result = action(args, p)
    except (ArtifactError, BuildError, IndexStoreError, FileNotFoundError) as exc:
        sys.stderr.write(f"{p.prog}: error: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


class BuildOptions(EncoderOptions, prog="ctl index build"):
    """Embed every product image of a data directory into a new index version."""

    data: Path = option(help="STL data directory", setting="data_dir")
    batch_size: int = option(32, "images per encoder call")
    work_dir: Path = option(
        help="where embedding chunks are cached so that a killed build resumes",
        setting="work_dir",
    )


def build_main(argv: list[str]) -> int:
    """``ctl index build``."""

    def run(a: BuildOptions, _: argparse.ArgumentParser) -> dict[str, object]:
        cache = a.work_dir / "index-embeddings"
        return build_index(*open_store(a), a.data, cache, a.batch_size, a.ann_threshold).to_dict()

    return _run(BuildOptions, argv, run)


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


class AddOptions(EncoderOptions, prog="ctl index add"):
    """Add products (id = image file name without extension) as a new index version."""

    images: list[Path] | None = option(None, "image files or directories (or --json)")
    json_file: Path | None = option(
        None, "a JSON list of {id, category, image}", flag="--json", metavar="JSON"
    )
    category: str | None = option(None, "category of every --images product")


def add_main(argv: list[str]) -> int:
    """``ctl index add``."""

    def run(args: AddOptions, p: argparse.ArgumentParser) -> dict[str, object]:
        if (args.images is None) == (args.json_file is None):
            p.error("give one of --images and --json")
        if args.images and not args.category:
            p.error("--images needs --category")
        if args.json_file:
            products = _products_from_json(args.json_file)
        else:
            files = _image_files(args.images or [])
            if not files:
                raise BuildError(f"no images found in {args.images}")
            products = [NewProduct(f.stem, args.category or "", f) for f in files]
        return add_products(*open_store(args), products, args.ann_threshold).to_dict()

    return _run(AddOptions, argv, run)


class RemoveOptions(EncoderOptions, prog="ctl index remove"):
    """Remove products by id as a new index version."""

    ids: list[str] = option(help="product ids", positional=True)


def remove_main(argv: list[str]) -> int:
    """``ctl index remove``."""

    def run(a: RemoveOptions, _: argparse.ArgumentParser) -> dict[str, object]:
        return remove_products(*open_store(a), a.ids, a.ann_threshold).to_dict()

    return _run(RemoveOptions, argv, run)


class InfoOptions(IndexOptions, prog="ctl index info"):
    """Show the current index version and the others kept on disk."""


def info_main(argv: list[str]) -> int:
    """``ctl index info``."""

    def run(args: InfoOptions, _: argparse.ArgumentParser) -> dict[str, object]:
        store = IndexStore.for_artifacts(args.artifacts)
        manifests = {v: store.manifest(v) for v in store.versions()}
        versions = [
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
            for v, man in manifests.items()
        ]
        return {"root": str(store.root), "current": store.current(), "versions": versions}

    return _run(InfoOptions, argv, run)
