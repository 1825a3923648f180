"""Test fixtures as functions: a tiny trained-looking run, its artifacts, a small real catalog.

``make_tiny_artifacts`` goes through the real paths (a run directory, ``export_run``,
``build_index``) on the random ``tiny`` backbone, in seconds. ``FakeEncoder`` implements the
``Encoder`` protocol with numpy alone, for unit tests that must not need torch or ONNX.
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

from runtime.encoder import SceneEmbedding

TINY_SEED = 0


def real_categories(stl_dir: Path) -> list[str]:
    """The leaf categories a model trained on ``stl_dir`` knows."""
    from training.stl import STLData

    return STLData.load(stl_dir).category_names()


def make_tiny_run(run_dir: Path, categories: Sequence[str], seed: int = TINY_SEED) -> Path:
    """A run directory with a random CTLModel on the ``tiny`` backbone (what ``load_run`` reads)."""
    import torch

    from model.backbones import build_backbone
    from model.ctl import CTLModel

    backbone = build_backbone("tiny")
    torch.manual_seed(seed)
    model = CTLModel(backbone.global_dim, backbone.local_dim, list(categories)).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"backbone": "tiny", "backbone_weights": None, "model": model.config()}
    torch.save({"model": model.state_dict(), "config": config}, run_dir / "checkpoint.pt")
    (run_dir / "config.json").write_text(json.dumps(config, indent=2))
    (run_dir / "metrics.json").write_text(json.dumps({"best_val_auc": 0.5, "backbone": "tiny"}))
    return run_dir


def make_catalog_subset(stl_dir: Path, dest: Path, per_category: int = 5) -> Path:
    """A data directory holding the first ``per_category`` product images of each category of
    ``stl_dir`` (symlinked, never copied) and their categories."""
    from training.stl import STLData

    data = STLData.load(stl_dir)
    wanted = set(data.category_names())
    chosen: dict[str, str] = {}
    taken: dict[str, int] = {}
    for pid in data.available_products():
        cat = data.categories[pid]
        if cat in wanted and taken.get(cat, 0) < per_category:
            taken[cat] = taken.get(cat, 0) + 1
            chosen[pid] = cat
    products = dest / "images" / "products"
    products.mkdir(parents=True, exist_ok=True)
    for pid in chosen:
        link = products / f"{pid}.jpg"
        if not link.exists():
            os.symlink(data.product_path(pid).resolve(), link)
    (dest / "fashion.json").write_text("")
    (dest / "fashion-cat.json").write_text(
        json.dumps({p: f"Fashion|{c}" for p, c in chosen.items()})
    )
    return dest


def make_image_catalog(dest: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """A data directory of small random product JPEGs, ``counts[category]`` of each (added to
    what ``dest`` holds; ids are unique per ``seed``)."""
    rng = np.random.default_rng(seed)
    products = dest / "images" / "products"
    products.mkdir(parents=True, exist_ok=True)
    cat_file = dest / "fashion-cat.json"
    cats: dict[str, str] = json.loads(cat_file.read_text()) if cat_file.is_file() else {}
    for cat, n in counts.items():
        for i in range(n):
            pid = f"{seed}-{cat[:3].lower()}-{i}"
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(products / f"{pid}.jpg", quality=90)
            cats[pid] = f"Apparel & Accessories|{cat}"
    (dest / "fashion.json").write_text("")
    cat_file.write_text(json.dumps(cats))
    return dest


def make_tiny_artifacts(out_dir: Path, stl_dir: Path, per_category: int = 5) -> Path:
    """``out_dir`` with a tiny exported model and an index of ``per_category`` real products of
    every category; returns ``out_dir``. The run and the data subset live beside it."""
    from index.build import build_index
    from index.store import IndexStore
    from model.export import export_run
    from runtime.encoder import OnnxEncoder

    out_dir = Path(out_dir)
    run = make_tiny_run(out_dir.parent / f"{out_dir.name}-run", real_categories(stl_dir))
    export_run(run, out_dir)
    data = make_catalog_subset(stl_dir, out_dir.parent / f"{out_dir.name}-data", per_category)
    encoder = OnnxEncoder.from_artifacts(out_dir, device="cpu")
    build_index(IndexStore.for_artifacts(out_dir), encoder, data)
    return out_dir


class FakeEncoder:
    """A deterministic numpy encoder: embeddings are fixed random projections of pixels.

    The same image always gets the same embedding, and different images different ones, which is
    all the index and service logic needs.
    """

    def __init__(
        self, categories: Sequence[str], dim: int = 16, grid: int = 7, version: str = "fake-1"
    ) -> None:
        rng = np.random.default_rng(1234)
        self._categories = list(categories)
        self._dim = dim
        self._version = version
        self.grid = grid
        self._w_global = rng.normal(size=(8 * 8 * 3, dim))
        self._w_local = rng.normal(size=(2 * 2 * 3, dim))
        self._w_key = rng.normal(size=(2 * 2 * 3, dim))
        self._cat = _unit(rng.normal(size=(len(self._categories), dim)))

    @property
    def categories(self) -> list[str]:
        return list(self._categories)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def version(self) -> str:
        return self._version

    @property
    def providers(self) -> list[str]:
        return ["FakeExecutionProvider"]

    @property
    def precision(self) -> str:
        return "fp32"

    @property
    def lanes(self) -> int:
        return 1

    @property
    def input_size(self) -> int:
        return 32

    @staticmethod
    def _pixels(image: Image.Image, size: int) -> np.ndarray:
        arr = np.asarray(image.convert("RGB").resize((size, size)), np.float64)
        return arr / 127.5 - 1.0

    def prepare(self, image: Image.Image) -> Image.Image:
        return image

    def embed_products(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self._dim), np.float32)
        x = np.stack([self._pixels(im, 8).reshape(-1) for im in images])
        return _unit(x @ self._w_global).astype(np.float32)

    def embed_scenes(self, images: Sequence[Image.Image]) -> list[SceneEmbedding]:
        out = []
        g = self.grid
        for im, f_s in zip(images, self.embed_products(images), strict=True):
            cells = self._pixels(im, 2 * g).reshape(g, 2, g, 2, 3).transpose(0, 2, 1, 3, 4)
            cells = cells.reshape(g * g, -1)
            f_i = _unit(cells @ self._w_local)
            keys = _unit(cells @ self._w_key)
            logits = -((keys[None, :, :] - self._cat[:, None, :]) ** 2).sum(-1)
            att = np.exp(logits - logits.max(axis=1, keepdims=True))
            att /= att.sum(axis=1, keepdims=True)
            out.append(SceneEmbedding(f_s, f_i.astype(np.float32), att.astype(np.float32)))
        return out


def synthetic_unit_vectors(
    n: int, dim: int = 128, seed: int = 0, decay: float = 0.5, chunk: int = 100_000
) -> np.ndarray:
    """(n, dim) float32 unit vectors shaped like learned embeddings, not like noise.

    Gaussian with a power-law spectrum (the j-th principal axis has standard deviation
    j^-decay), in a fixed random rotation, then normalized. Learned embeddings put most of their
    variance in a few directions; uniform vectors on the sphere are the structureless worst case
    of nearest-neighbour search. Draws with different ``seed`` share the rotation, so queries
    and database come from one distribution.
    """
    rotation, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, dim)))
    scale = np.arange(1, dim + 1, dtype=np.float64) ** -decay
    basis = (scale[:, None] * rotation.T).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        x = rng.standard_normal((end - start, dim), dtype=np.float32) @ basis
        out[start:end] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves a folder without logging each request."""

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def folder_server(
    root: Path, handler: type[SimpleHTTPRequestHandler] = QuietHandler
) -> Iterator[str]:
    """A local HTTP server of ``root`` (404 for what is not there); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
