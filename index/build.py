"""Building index versions: the whole catalog from a data directory, or add/remove products.

Embedding is batched, logged and cached in chunks (``cache_dir``), so a killed build resumes
where it stopped. Every operation ends in :meth:`IndexStore.publish`, which switches ``CURRENT``
only after the new version verified itself; adding or removing products re-embeds nothing else.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from index import catalog
from index.store import (
    CategoryData,
    IndexStore,
    InvalidProductIdError,
    UnknownProductError,
    check_product_id,
)
from runtime.atomic import write_bytes
from runtime.decode import MAX_IMAGE_PIXELS, DecodeError, decode_image
from runtime.encoder import Encoder
from runtime.progress import Progress

log = logging.getLogger(__name__)

JPEG_SIGNATURE = b"\xff\xd8\xff"
"""How every JPEG file starts (MPO ones too): those bytes are stored as they are."""
CHUNK = 512
"""Images per cached chunk: the most work a killed build loses."""


class BuildError(Exception):
    """Bad input to a build (unknown category, duplicate id, nothing to index, ...)."""


@dataclass(frozen=True)
class NewProduct:
    """A product to add: its id, category and image (a path or the file's bytes)."""

    id: str
    category: str
    image: Path | bytes


@dataclass
class BuildReport:
    """What a build/add/remove did; ``skipped`` maps product id -> why it was left out."""

    version: str
    model_version: str
    counts: dict[str, int]
    embedded: int = 0
    cached: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "version": self.version,
            "model_version": self.model_version,
            "products": sum(self.counts.values()),
            "counts": self.counts,
            "embedded": self.embedded,
            "cached": self.cached,
            "skipped": len(self.skipped),
            "skipped_ids": self.skipped,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class _Loaded:
    """A decoded RGB image and, when the file is a JPEG, its bytes (kept as they are)."""

    image: Image.Image
    jpeg: bytes | None


def load_image(
    source: Path | bytes, max_pixels: int = MAX_IMAGE_PIXELS, min_size: int = 0
) -> _Loaded | str:
    """The decoded RGB image (``runtime.decode``, the decoder of every path; ``min_size``: the
    model input, for a big JPEG's reduced-scale decoding) and its bytes, or the reason it
    cannot be used."""
    try:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    except OSError as exc:
        return f"missing: {exc.strerror or exc}"
    name = "image" if isinstance(source, bytes) else Path(source).name
    try:
        image = decode_image(raw, max_pixels, min_size, name)
    except DecodeError as exc:
        return f"{'too large' if exc.kind == 'too_large' else 'corrupt'}: {exc}"
    return _Loaded(image, raw if raw.startswith(JPEG_SIGNATURE) else None)


def embed_catalog(
    encoder: Encoder,
    items: Sequence[tuple[str, Path | bytes]],
    cache_dir: Path | None = None,
    batch_size: int = 32,
    on_image: Callable[[str, _Loaded], None] | None = None,
) -> tuple[list[str], np.ndarray, dict[str, str], int]:
    """Embed ``(id, image)`` items: (ids embedded, (N, D) embeddings, skipped id -> reason, cached).

    Chunks of :data:`CHUNK` items are cached as ``cache_dir/chunk-NNNNN.npz`` keyed by their ids,
    so a rerun with the same encoder (callers key ``cache_dir`` by its version) skips them.
    ``on_image`` sees every decoded image (the builder stores them).
    """
    ids: list[str] = []
    parts: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    cached = 0
    started = time.perf_counter()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    with (
        ThreadPoolExecutor(max_workers=2) as pool,
        Progress(log, len(items), "embedding products", "img") as progress,
    ):
        for c, start in enumerate(range(0, len(items), CHUNK)):
            end = min(len(items), start + CHUNK)
            chunk = items[start:end]
            chunk_ids = [pid for pid, _ in chunk]
            path = cache_dir / f"chunk-{c:05d}.npz" if cache_dir is not None else None
            hit = _read_chunk(path, chunk_ids) if path is not None else None
            if hit is not None:
                c_ids, c_emb, c_skip = hit
                cached += len(chunk)
            else:
                c_ids, c_emb, c_skip = _embed_chunk(encoder, chunk, pool, batch_size, on_image)
                if path is not None:
                    _write_chunk(path, chunk_ids, c_ids, c_emb, c_skip)
            ids.extend(c_ids)
            parts.append(c_emb)
            skipped.update(c_skip)
            rate = (end - cached) / max(time.perf_counter() - started, 1e-9)
            eta = (len(items) - end) / rate if rate > 0 else 0.0
            progress.update(
                end - start,
                "embedded %d/%d products (%d from cache, %d skipped), %.1f img/s, ETA %.0f s",
                end,
                len(items),
                cached,
                len(skipped),
                rate,
                eta,
            )
    emb = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
    return ids, emb.astype(np.float32), skipped, cached


def _embed_chunk(
    encoder: Encoder,
    chunk: Sequence[tuple[str, Path | bytes]],
    pool: ThreadPoolExecutor,
    batch_size: int,
    on_image: Callable[[str, _Loaded], None] | None,
) -> tuple[list[str], np.ndarray, dict[str, str]]:
    ids: list[str] = []
    parts: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    batch: list[tuple[str, _Loaded]] = []

    def flush() -> None:
        if batch:
            parts.append(encoder.embed_products([ld.image for _, ld in batch]))
            ids.extend(pid for pid, _ in batch)
            batch.clear()

    size = encoder.input_size
    loads = pool.map(lambda it: load_image(it[1], min_size=size), chunk)
    for (pid, _), loaded in zip(chunk, loads, strict=True):
        if isinstance(loaded, str):
            log.warning("skipping product %s: %s", pid, loaded)
            skipped[pid] = loaded
            continue
        if on_image is not None:
            on_image(pid, loaded)
        batch.append((pid, loaded))
        if len(batch) >= batch_size:
            flush()
    flush()
    emb = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)
    return ids, emb, skipped


def _read_chunk(
    path: Path, chunk_ids: list[str]
) -> tuple[list[str], np.ndarray, dict[str, str]] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if json.loads(str(z["chunk_ids"])) != chunk_ids:
                return None
            return json.loads(str(z["ids"])), np.array(z["emb"]), json.loads(str(z["skipped"]))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("ignoring unreadable cache chunk %s: %s", path, exc)
        return None


def _write_chunk(
    path: Path, chunk_ids: list[str], ids: list[str], emb: np.ndarray, skipped: dict[str, str]
) -> None:
    buf = io.BytesIO()
    np.savez(
        buf,
        chunk_ids=np.array(json.dumps(chunk_ids)),
        ids=np.array(json.dumps(ids)),
        emb=emb.astype(np.float32),
        skipped=np.array(json.dumps(skipped)),
    )
    write_bytes(path, buf.getvalue())


def catalog_items(
    data_dir: Path, categories: Sequence[str]
) -> tuple[list[tuple[str, str, Path]], dict[str, str]]:
    """(id, category, image path) of every product image under ``DIR/images/products``, sorted,
    and id -> reason for those without a category the model knows."""
    images = catalog.product_dir(data_dir)
    if not images.is_dir():
        raise BuildError(f"{images} not found: no product images to index")
    try:
        category_of = catalog.read_categories(data_dir)
    except (OSError, ValueError) as exc:
        raise BuildError(str(exc)) from exc
    known = set(categories)
    items: list[tuple[str, str, Path]] = []
    skipped: dict[str, str] = {}
    for path in sorted(images.glob("*.jpg")):
        cat = category_of.get(path.stem)
        try:
            check_product_id(path.stem)
        except InvalidProductIdError as exc:
            skipped[path.stem] = str(exc)
            continue
        if cat is None:
            skipped[path.stem] = "no category in fashion-cat.json"
        elif cat not in known:
            skipped[path.stem] = f"category {cat!r} is not one of the model's"
        else:
            items.append((path.stem, cat, path))
    if skipped:
        log.warning("%d product images have no usable category", len(skipped))
    return items, skipped


def group(
    ids: Sequence[str], emb: np.ndarray, category_of: dict[str, str]
) -> dict[str, CategoryData]:
    rows: dict[str, list[int]] = {}
    for n, pid in enumerate(ids):
        rows.setdefault(category_of[pid], []).append(n)
    return {c: CategoryData([ids[i] for i in r], emb[r]) for c, r in sorted(rows.items())}


def regroup(
    groups: dict[str, CategoryData], drop: set[str], added: dict[str, CategoryData]
) -> None:
    """Take the products ``drop`` out of ``groups`` and append the ``added`` ones (:func:`group`)
    to their categories, in place."""
    for cat, g in groups.items():
        keep = [n for n, pid in enumerate(g.ids) if pid not in drop]
        if len(keep) != len(g.ids):
            groups[cat] = CategoryData([g.ids[n] for n in keep], g.emb[keep])
    for cat, new in added.items():
        old = groups.get(cat, CategoryData([], new.emb[:0]))
        groups[cat] = CategoryData(old.ids + new.ids, np.concatenate([old.emb, new.emb]))


def build_index(
    store: IndexStore,
    encoder: Encoder,
    data_dir: Path,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    ann_threshold: int = 50_000,
) -> BuildReport:
    """Embed every product image of ``data_dir`` and publish it as a new version."""
    started = time.perf_counter()
    items, skipped = catalog_items(data_dir, encoder.categories)
    if not items:
        raise BuildError(f"no product image with a known category under {data_dir}")
    category_of = {pid: cat for pid, cat, _ in items}
    cache = cache_dir / encoder.version if cache_dir is not None else None
    with store.lock():
        ids, emb, failed, cached = embed_catalog(
            encoder,
            [(pid, path) for pid, _, path in items],
            cache,
            batch_size,
            on_image=lambda pid, ld: store.put_image(pid, ld.image, ld.jpeg),
        )
        for pid in ids:  # images of chunks that came from the cache
            if not store.image_path(pid).is_file():
                loaded = load_image(catalog.product_path(data_dir, pid))
                if isinstance(loaded, str):
                    raise BuildError(
                        f"product image {pid} became unreadable during the build: {loaded}"
                    )
                store.put_image(pid, loaded.image, loaded.jpeg)
        skipped.update(failed)
        if not ids:
            raise BuildError(f"none of the {len(items)} product images could be read")
        groups = group(ids, emb, category_of)
        report = _publish(
            store, encoder, groups, ann_threshold, started, embedded=len(ids) - cached,
            cached=cached, skipped=skipped,
        )  # fmt: skip
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
    log.info(
        "built index %s: %d products, %d skipped, %.1f s",
        report.version,
        len(ids),
        len(skipped),
        report.seconds,
    )
    return report


def _publish(
    store: IndexStore,
    encoder: Encoder,
    groups: dict[str, CategoryData],
    ann_threshold: int,
    started: float,
    **report: Any,
) -> BuildReport:
    """Publish ``groups`` as a new version (under the store's lock) and report on it."""
    version = store.publish(encoder.version, encoder.dim, groups, ann_threshold)
    counts = {c: len(g.ids) for c, g in groups.items()}
    seconds = time.perf_counter() - started
    return BuildReport(version, encoder.version, counts, seconds=seconds, **report)


def current_groups(store: IndexStore, encoder: Encoder) -> dict[str, CategoryData]:
    """The current version's categories, refused when another model built it."""
    catalog = store.load(device="cpu")
    if catalog.model_version != encoder.version:
        raise BuildError(
            f"index {catalog.version} was built with model {catalog.model_version}, the encoder "
            f"is {encoder.version}: rebuild with 'ctl index build'"
        )
    return {
        c: CategoryData(list(catalog.category(c).ids), catalog.category(c).emb)
        for c in catalog.categories
    }


def add_products(
    store: IndexStore,
    encoder: Encoder,
    products: Sequence[NewProduct],
    ann_threshold: int = 50_000,
) -> BuildReport:
    """Embed only the new products and publish the current version plus them.

    Every id is checked first (:class:`~index.store.InvalidProductIdError`): nothing is
    written for a call with a bad one."""
    started = time.perf_counter()
    for p in products:
        check_product_id(p.id)
    unknown = sorted({p.category for p in products} - set(encoder.categories))
    if unknown:
        raise BuildError(f"unknown categories {unknown}; valid: {encoder.categories}")
    new_ids = [p.id for p in products]
    if len(set(new_ids)) != len(new_ids):
        raise BuildError("duplicate product ids in the input")
    with store.lock():
        groups = current_groups(store, encoder)
        existing = [pid for pid in new_ids if any(pid in g.ids for g in groups.values())]
        if existing:
            raise BuildError(f"products already in the index (remove them first): {existing}")
        ids, emb, skipped, _ = embed_catalog(
            encoder,
            [(p.id, p.image) for p in products],
            on_image=lambda pid, ld: store.put_image(pid, ld.image, ld.jpeg),
        )
        if not ids:
            raise BuildError(f"no product could be added: {skipped}")
        regroup(groups, set(), group(ids, emb, {p.id: p.category for p in products}))
        return _publish(
            store, encoder, groups, ann_threshold, started, embedded=len(ids), skipped=skipped
        )


def remove_products(
    store: IndexStore, encoder: Encoder, ids: Sequence[str], ann_threshold: int = 50_000
) -> BuildReport:
    """Publish the current version without ``ids``; unknown ids raise UnknownProductError."""
    started = time.perf_counter()
    drop = set(ids)
    with store.lock():
        groups = current_groups(store, encoder)
        present = {pid for g in groups.values() for pid in g.ids}
        missing = sorted(drop - present)
        if missing:
            raise UnknownProductError(missing)
        regroup(groups, drop, {})
        return _publish(store, encoder, groups, ann_threshold, started)
