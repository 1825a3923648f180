"""The versioned on-disk index: layout, checksums, and the atomic switch of ``CURRENT``.

A version is written into a hidden staging directory, loaded back and verified (counts match,
every product finds itself first), renamed into ``versions/`` and only then named by
``CURRENT`` (``os.replace``). A writer killed at any point leaves the serving version intact.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image

from index.attributes import ATTRIBUTES_FILE, AttributeStore
from index.prior import PopularityPrior
from index.search import (
    FLAT,
    IVFPQ,
    CatalogIndex,
    CategoryIndex,
    Product,
    faiss_gpu_available,
    make_index,
)
from runtime.artifacts import sha256_file
from runtime.atomic import write_bytes, write_text
from runtime.errors import quote

log = logging.getLogger(__name__)

INDEX_DIR = "index"
VERSIONS_DIR = "versions"
IMAGES_DIR = "images"
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
MANIFEST_FILE = "manifest.json"
PRODUCTS_FILE = "products.json"
STAGING_PREFIX = ".tmp-"
SELF_MATCH_TOL = 1e-4
"""A product may be beaten to first place only by a duplicate (same inner product)."""
VERIFY_ALL_UP_TO = 5_000
VERIFY_SAMPLE = 2_000
"""Larger categories verify a random sample of their products (one query each)."""
PRODUCT_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"
"""The one format of a product id: 1-128 of ``A-Z a-z 0-9 . _ -``, not starting with a dot.

Ids name files (``images/<id>.jpg``), so nothing that could leave that folder (``/``, ``..``,
NUL) or hide in it (a leading dot: the store's own temp and lock files) is an id.
"""
_PRODUCT_ID = re.compile(PRODUCT_ID_PATTERN)


class IndexStoreError(Exception):
    """No usable index: nothing published, a corrupt version, or a failed verification."""


class InvalidProductIdError(IndexStoreError, ValueError):
    """A product id outside :data:`PRODUCT_ID_PATTERN` (the message quotes at most a prefix)."""

    def __init__(self, pid: str) -> None:
        super().__init__(
            f"invalid product id {quote(pid)}: ids are 1-128 characters of A-Z a-z 0-9 . _ - "
            "and do not start with a dot"
        )


def check_product_id(pid: str) -> str:
    """``pid`` when it is a valid product id, else :class:`InvalidProductIdError`."""
    if not isinstance(pid, str) or _PRODUCT_ID.fullmatch(pid) is None:
        raise InvalidProductIdError(str(pid))
    return pid


class UnknownProductError(IndexStoreError, KeyError):
    """Product ids that the index does not hold."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"unknown product ids: {ids}")
        self.ids = ids

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class CategoryData:
    """What a version stores for one category: product ids and their unit embeddings."""

    ids: list[str]
    emb: np.ndarray


def slugify(category: str) -> str:
    """A file-name-safe name for a category: ``"Shirts & Tops"`` -> ``"shirts-tops"``."""
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-") or "category"


def new_version_id() -> str:
    """Sortable by creation time (to the microsecond; writers hold the lock), and unique."""
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}{int(now % 1 * 1e6):06d}Z-{secrets.token_hex(2)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finds_itself(cat: CategoryIndex, row: int) -> bool:
    """The product's own embedding retrieves it first (or a duplicate of it)."""
    q = cat.emb[row]
    (top,) = cat.nearest(q, 1)
    return bool(top == row or float(cat.emb[top] @ q) <= float(q @ q) + SELF_MATCH_TOL)


class IndexStore:
    """``ARTIFACTS_DIR/index``: ``versions/<id>/``, ``images/<id>.jpg`` and ``CURRENT``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def for_artifacts(cls, artifacts_dir: Path) -> IndexStore:
        return cls(Path(artifacts_dir) / INDEX_DIR)

    @property
    def versions_dir(self) -> Path:
        return self.root / VERSIONS_DIR

    @property
    def attributes(self) -> AttributeStore:
        """The products' attributes (title, price, stock, ...): one file for every version."""
        return AttributeStore(self.root / ATTRIBUTES_FILE)

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGES_DIR

    def image_path(self, pid: str) -> Path:
        """Where the image of ``pid`` lives; always inside :attr:`images_dir` (an id that could
        name anything else is refused, whoever calls)."""
        path = self.images_dir / f"{check_product_id(pid)}.jpg"
        if path.parent != self.images_dir:  # unreachable with the pattern; a second lock
            raise InvalidProductIdError(pid)
        return path

    def current(self) -> str | None:
        """The serving version, or None before the first publication."""
        path = self.root / CURRENT_FILE
        if not path.is_file():
            return None
        return path.read_text().strip() or None

    def versions(self) -> list[str]:
        """Complete versions, oldest first (staging directories are not versions)."""
        if not self.versions_dir.is_dir():
            return []
        return sorted(
            d.name
            for d in self.versions_dir.iterdir()
            if not d.name.startswith(".") and (d / MANIFEST_FILE).is_file()
        )

    def manifest(self, version: str) -> dict[str, Any]:
        path = self.versions_dir / version / MANIFEST_FILE
        if not path.is_file():
            raise IndexStoreError(f"index version {version!r} not found under {self.versions_dir}")
        return dict(json.loads(path.read_text()))

    def categories_of(self, version: str | None = None) -> dict[str, str]:
        """product id -> category in a version (default: ``CURRENT``), read without loading
        the index (checksums are checked when a version is loaded)."""
        version = version or self.current()
        if version is None:
            raise IndexStoreError(f"no index version published under {self.root}")
        raw = json.loads((self.versions_dir / version / PRODUCTS_FILE).read_text())
        return {pid: p["category"] for pid, p in raw.items()}

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time (build, add, remove); readers never wait."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:  # leftovers of killed writers (we hold the lock: no writer is alive)
                for d in self.versions_dir.glob(STAGING_PREFIX + "*"):
                    log.info("removing %s left by an interrupted build", d)
                    shutil.rmtree(d, ignore_errors=True)
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self, version: str | None = None, device: str = "auto") -> CatalogIndex:
        """Load a version (default: ``CURRENT``) after checking every file's sha256."""
        if version is None:
            version = self.current()
            if version is None:
                raise IndexStoreError(
                    f"no index version published under {self.root}; "
                    "run 'ctl index build --artifacts DIR --data DIR'"
                )
        return self._load_dir(self.versions_dir / version, device)

    def _load_dir(self, vdir: Path, device: str) -> CatalogIndex:
        if not (vdir / MANIFEST_FILE).is_file():
            raise IndexStoreError(f"{vdir} has no {MANIFEST_FILE}")
        man = json.loads((vdir / MANIFEST_FILE).read_text())
        for name, expected in man["files"].items():
            path = vdir / name
            if not path.is_file() or sha256_file(path) != expected:
                raise IndexStoreError(
                    f"{path} is missing or does not match its sha256 in the manifest; "
                    "the index version is corrupt: rebuild it or publish another version"
                )
        use_gpu = device in ("auto", "cuda") and faiss_gpu_available()
        if device == "cuda" and not use_gpu:
            raise IndexStoreError("device 'cuda' requested but faiss has no GPU support here")
        gpu = faiss.StandardGpuResources() if use_gpu else None
        cats: dict[str, CategoryIndex] = {}
        for name, info in man["categories"].items():
            slug = info["slug"]
            index = faiss.read_index(str(vdir / f"{slug}.faiss"))
            if gpu is not None and index.ntotal and info["kind"] == FLAT:
                index = faiss.index_cpu_to_gpu(gpu, 0, index)  # no PQ fast-scan on GPUs
            ids = json.loads((vdir / f"{slug}.ids.json").read_text())
            emb = np.load(vdir / f"{slug}.emb.npy")
            cats[name] = CategoryIndex(name, ids, emb, index, info["kind"])
            if len(ids) != info["count"]:
                raise IndexStoreError(f"{vdir}: {name} holds {len(ids)} ids, manifest {info}")
        raw = json.loads((vdir / PRODUCTS_FILE).read_text())
        products = {
            pid: Product(pid, p["category"], self.root / p["image"]) for pid, p in raw.items()
        }
        catalog = CatalogIndex(
            man["version"],
            man["model_version"],
            int(man["dim"]),
            cats,
            products,
            "cuda" if use_gpu else "cpu",
        )
        catalog.apply_prior(PopularityPrior.from_artifacts(self.root.parent))
        catalog.attributes = catalog.attributes_at(*self.attributes.read())
        log.info(
            "index %s loaded: %d products in %d categories, faiss on %s",
            catalog.version,
            len(products),
            len(cats),
            catalog.faiss_device,
        )
        return catalog

    def put_image(self, pid: str, image: Image.Image, jpeg: bytes | None) -> None:
        """Keep a product's image as ``images/<id>.jpg``: a JPEG file's bytes as they are,
        anything else re-encoded. An invalid id raises :class:`InvalidProductIdError` and writes
        nothing."""
        path = self.image_path(pid)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        raw = jpeg
        if raw is None:
            buf = io.BytesIO()
            image.convert("RGB").save(buf, "JPEG", quality=95)
            raw = buf.getvalue()
        if path.is_file() and path.read_bytes() == raw:
            return
        write_bytes(path, raw)

    def publish(
        self,
        model_version: str,
        dim: int,
        categories: dict[str, CategoryData],
        ann_threshold: int,
        keep: int = 3,
    ) -> str:
        """Write, verify and switch to a new version holding ``categories``; returns its id.

        Call under :meth:`lock`. The images of every product must already be stored.
        """
        version = new_version_id()
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f"{STAGING_PREFIX}{version}"
        staging.mkdir()
        try:
            self._write(staging, version, model_version, dim, categories, ann_threshold)
            self._verify(staging, categories)
            os.rename(staging, self.versions_dir / version)
            _fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        write_text(self.root / CURRENT_FILE, version + "\n")
        log.info("index version %s is now current", version)
        self.prune(keep)
        return version

    def _write(
        self,
        vdir: Path,
        version: str,
        model_version: str,
        dim: int,
        categories: dict[str, CategoryData],
        ann_threshold: int,
    ) -> None:
        files: dict[str, str] = {}
        cats: dict[str, dict[str, Any]] = {}
        products: dict[str, dict[str, str]] = {}
        slugs: set[str] = set()
        for name, data in sorted(categories.items()):
            slug = slugify(name)
            if slug in slugs:
                slug = f"{slug}-{len(slugs)}"
            slugs.add(slug)
            emb = np.ascontiguousarray(data.emb, dtype=np.float32).reshape(len(data.ids), dim)
            kind = IVFPQ if len(data.ids) >= ann_threshold else FLAT  # exact below the threshold
            started = time.perf_counter()
            faiss.write_index(make_index(emb, kind), str(vdir / f"{slug}.faiss"))
            log.info(
                "%s: %d products, %s index in %.1f s",
                name,
                len(data.ids),
                kind,
                time.perf_counter() - started,
            )
            (vdir / f"{slug}.ids.json").write_text(json.dumps(data.ids))
            np.save(vdir / f"{slug}.emb.npy", emb)
            names = [f"{slug}.faiss", f"{slug}.ids.json", f"{slug}.emb.npy"]
            cat_files = {f: sha256_file(vdir / f) for f in names}
            files.update(cat_files)
            cats[name] = {"slug": slug, "count": len(data.ids), "kind": kind, "files": cat_files}
            for pid in data.ids:
                products[check_product_id(pid)] = {
                    "category": name,
                    "image": f"{IMAGES_DIR}/{pid}.jpg",
                }
        (vdir / PRODUCTS_FILE).write_text(json.dumps(products))
        files[PRODUCTS_FILE] = sha256_file(vdir / PRODUCTS_FILE)
        manifest = {
            "version": version,
            "model_version": model_version,
            "dim": dim,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "count": len(products),
            "categories": cats,
            "files": files,
        }
        for f in vdir.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        write_text(vdir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")

    def _verify(self, vdir: Path, expected: dict[str, CategoryData]) -> None:
        """Load the staged version back: counts match and every product finds itself first."""
        catalog = self._load_dir(vdir, device="cpu")
        total = sum(len(d.ids) for d in expected.values())
        if len(catalog) != total:
            raise IndexStoreError(f"verification: {len(catalog)} products stored, {total} given")
        for name, data in expected.items():
            cat = catalog.category(name)
            if cat.ids != data.ids:
                raise IndexStoreError(f"verification: ids of {name} differ from the input")
            rows = np.arange(len(cat))
            if len(cat) > VERIFY_ALL_UP_TO:
                rows = np.sort(np.random.default_rng(0).choice(len(cat), VERIFY_SAMPLE, False))
            bad = [cat.ids[r] for r in rows if not _finds_itself(cat, int(r))]
            if bad:
                raise IndexStoreError(
                    f"verification: {len(bad)} products of {name} do not find themselves "
                    f"first, e.g. {bad[:10]}"
                )
        log.info("verified %s: %d products find themselves first", vdir.name, total)

    def prune(self, keep: int) -> None:
        """Keep the newest ``keep`` versions and CURRENT; drop images no kept version uses."""
        current = self.current()
        versions = self.versions()
        kept = set(versions[-keep:]) | ({current} if current else set())
        for v in versions:
            if v not in kept:
                log.info("removing old index version %s", v)
                shutil.rmtree(self.versions_dir / v, ignore_errors=True)
        used: set[str] = set()
        for v in kept:
            used.update(json.loads((self.versions_dir / v / PRODUCTS_FILE).read_text()))
        if self.images_dir.is_dir():
            for img in self.images_dir.glob("*.jpg"):
                if img.stem not in used:
                    img.unlink(missing_ok=True)
