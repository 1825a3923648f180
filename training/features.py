"""The frozen-backbone feature cache: the backbone runs once per image, training runs on arrays.

``ctl features --data DIR`` computes, for every CTL example (a pair whose product survives the
crop rules), the cropped scene's global and region features, and for every catalog product its
global features, each for several views (``orig``, ``flip``: horizontally flipped, ``zoom``:
centre 90% crop). Arrays are fp16 ``.npy`` files, memory-mapped when read. The cache directory
is keyed by the backbone (name, weights file, layers), its preprocessing, the crop rules and
the data set, so changing any of them starts a new one. Work is done in chunks, each written
atomically, with ``progress.json`` beside them: an interrupted run resumes where it stopped.

``compute_features(backbone, images)`` embeds in-memory images the same way (evaluation uses it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from model.backbones import BACKBONES, Backbone, build_backbone
from model.export import export_onnx
from runtime.atomic import atomic_path, write_json
from runtime.options import Options, option
from runtime.preprocess import to_batch
from runtime.progress import Progress
from runtime.sessions import open_session
from training import crop
from training.config import TrainingSettings
from training.stl import STLData, rgb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """An augmentation of the input image: horizontal flip and/or a centre crop of ``zoom``."""

    flip: bool = False
    zoom: float = 1.0

    def apply(self, image: Image.Image) -> Image.Image:
        """The centre ``zoom`` fraction of each side (the flip happens in preprocessing)."""
        if self.zoom >= 1.0:
            return image
        w, h = image.size
        cw, ch = max(1, round(w * self.zoom)), max(1, round(h * self.zoom))
        left, top = (w - cw) // 2, (h - ch) // 2
        return image.crop((left, top, left + cw, top + ch))


VIEWS: dict[str, View] = {"orig": View(), "flip": View(flip=True), "zoom": View(zoom=0.9)}
"""View name -> augmentation; ``zoom`` is the centre 90% of the image."""
DEFAULT_VIEWS = ("orig", "flip")
CHUNK = 256
ENGINES = ("auto", "onnx", "torch")


def use_all_cores() -> int:
    """Give torch every core (feature extraction and training are CPU-bound), or as many as
    ``OMP_NUM_THREADS`` allows when the user set it (parallel runs on one machine)."""
    n = int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=4)
def _onnx_session(backbone: Backbone) -> Any:
    """The backbone exported like the encoders and opened like them (~2-3x eager torch)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "backbone.onnx"
        export_onnx(backbone, backbone.spec.size, ["global", "regions"], path)
        return open_session(path, threads=os.cpu_count() or 1)


def run_backbone(
    backbone: Backbone, batch: np.ndarray, engine: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """Global and region features of a preprocessed batch (N, 3, S, S), on ``engine``."""
    if engine != "torch":  # auto and onnx: ONNX Runtime is always installed beside torch
        g, r = _onnx_session(backbone).run(None, {"image": batch})
        return np.asarray(g), np.asarray(r)
    with torch.no_grad():
        g_t, r_t = backbone(torch.from_numpy(batch))
    return g_t.numpy(), r_t.numpy()


def compute_features(
    backbone: Backbone,
    images: Sequence[Image.Image],
    batch_size: int = 32,
    flip: bool = False,
    engine: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Backbone outputs of PIL images: global (N, G) and regions (N, R, L), float32.

    ``engine``: ``"onnx"`` (ONNX Runtime on a temporary export), ``"torch"`` (eager) or
    ``"auto"`` (ONNX Runtime when installed); both give the same numbers to ~1e-5.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    gs, rs = [], []
    for i in range(0, len(images), batch_size):
        g, r = run_backbone(
            backbone, to_batch(images[i : i + batch_size], backbone.spec, flip), engine
        )
        gs.append(g)
        rs.append(r)
    if not gs:
        regions = np.zeros((0, backbone.grid * backbone.grid, backbone.local_dim), np.float32)
        return np.zeros((0, backbone.global_dim), np.float32), regions
    return np.concatenate(gs), np.concatenate(rs)


# --- what goes into the cache -------------------------------------------------------------


def ctl_examples(data: STLData) -> tuple[list[Any], list[dict[str, Any]], dict[str, int]]:
    """The scene crops (``[scene, pixel box]``: several pairs of a scene can share a bbox, hence
    one crop), the CTL examples (pair -> crop row) and the crop rules' drop counts."""
    stats, pair_crops = crop.CropStats(), crop.PairCrops(data)
    crops: dict[tuple[str, crop.PixelBox], int] = {}
    examples: list[dict[str, Any]] = []
    for pair in data.pairs_with_images():
        result = pair_crops(pair)
        stats.add(result.reason)
        if result.box is None:
            continue
        row = crops.setdefault((pair.scene, result.box), len(crops))
        examples.append(
            {
                "scene": pair.scene,
                "product": pair.product,
                "bbox": list(pair.bbox),
                "category": data.category(pair.product),
                "crop": row,
            }
        )
    rows = [[scene, list(box)] for scene, box in crops]
    return rows, examples, {"kept": stats.kept, **stats.dropped}


def cache_key(backbone: Backbone, data: STLData) -> str:
    """Backbone identity + crop rules + data set: any change gives a new cache directory."""
    pairs_file = data.root / f"{data.domain}.json"
    blob = json.dumps(
        {
            "backbone": backbone.key(),
            "crop": [crop.GROW, crop.MIN_AREA_FRACTION, data.domain],
            "data": [str(data.root.resolve()), pairs_file.stat().st_size],
        },
        sort_keys=True,
    )
    return f"{backbone.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass
class FeatureCache:
    """A complete cache directory; arrays are memory-mapped fp16, ``(N, ...)`` per view."""

    path: Path
    meta: dict[str, Any]

    @property
    def examples(self) -> list[dict[str, Any]]:
        """``{"scene", "product", "bbox", "category", "crop"}``; ``crop`` is the scene row."""
        return list(self.meta["examples"])

    @property
    def products(self) -> list[str]:
        return list(self.meta["products"])

    @property
    def product_categories(self) -> list[str]:
        return list(self.meta["product_categories"])

    @property
    def views(self) -> list[str]:
        return list(self.meta["views"])

    def array(self, kind: str, view: str) -> np.ndarray:
        """``scene_global`` (N, G), ``scene_regions`` (N, R, L) or ``product_global`` (P, G)."""
        return np.load(self.path / f"{kind}-{view}.npy", mmap_mode="r")


def regions_kind(kind: str) -> str:
    """The region grids' array beside a global one: ``scene_global`` -> ``scene_regions``."""
    return kind.removesuffix("_global") + "_regions"


# --- building it ---------------------------------------------------------------------------


class ChunkBuilder:
    """Fills one cache directory chunk by chunk, resumably."""

    def __init__(self, path: Path, backbone: Backbone, batch_size: int, engine: str) -> None:
        use_all_cores()
        self.path, self.backbone = path, backbone
        self.batch_size, self.engine = batch_size, engine
        self.chunk_dir = path / "chunks"
        self.progress_file = path / "progress.json"
        self.progress: dict[str, Any] = (
            json.loads(self.progress_file.read_text()) if self.progress_file.is_file() else {}
        )

    def fill_views(
        self,
        meta: dict[str, Any],
        views: Sequence[str],
        scenes: tuple[int, Callable[[int], Image.Image]],
        products: tuple[int, Callable[[int], Image.Image]],
    ) -> tuple[FeatureCache, float]:
        """Every view's arrays of ``scenes`` and ``products`` (count, loader), then
        ``meta.json``: the complete cache and the seconds spent computing. Scenes keep their
        region grids."""
        spent = 0.0
        for view in views:
            spent += self.fill("scene_global", view, *scenes, regions=True)
            spent += self.fill("product_global", view, *products)
            if view not in meta["views"]:
                meta["views"].append(view)
        meta["seconds"] = float(meta["seconds"]) + spent
        write_json(self.path / "meta.json", meta, indent=1)
        if self.chunk_dir.is_dir() and not any(self.chunk_dir.iterdir()):
            shutil.rmtree(self.chunk_dir)
        return FeatureCache(self.path, meta), spent

    def fill(
        self,
        kind: str,
        view: str,
        n: int,
        load: Callable[[int], Image.Image],
        regions: bool = False,
    ) -> float:
        """Compute ``kind-view`` arrays for ``n`` images (with ``regions``, their region grids
        too: ``scene_global`` -> ``scene_regions``); returns the seconds spent computing."""
        finals = [self.path / f"{kind}-{view}.npy"]
        if regions:
            finals.append(self.path / f"{regions_kind(kind)}-{view}.npy")
        if all(f.is_file() for f in finals) or n == 0:
            return 0.0
        self.chunk_dir.mkdir(parents=True, exist_ok=True)
        n_chunks = (n + CHUNK - 1) // CHUNK
        todo = [c for c in range(n_chunks) if not self._chunk(kind, view, c, regions).is_file()]
        if len(todo) < n_chunks:
            log.info(
                "%s/%s: resuming, %d of %d chunks done", kind, view, n_chunks - len(todo), n_chunks
            )
        aug = VIEWS[view]
        start = time.perf_counter()

        def images(c: int) -> list[Image.Image]:
            return [aug.apply(load(i)) for i in range(c * CHUNK, min(n, (c + 1) * CHUNK))]

        with (
            ThreadPoolExecutor(1) as pool,  # decode the next chunk while this one runs
            Progress(log, n_chunks, f"{kind}/{view}", "chunk", n_chunks - len(todo)) as progress,
        ):
            nxt = pool.submit(images, todo[0]) if todo else None
            for k, c in enumerate(todo):
                assert nxt is not None
                ims = nxt.result()
                nxt = pool.submit(images, todo[k + 1]) if k + 1 < len(todo) else None
                g, r = compute_features(self.backbone, ims, self.batch_size, aug.flip, self.engine)
                arrays = {"global": g.astype(np.float16)}
                if regions:
                    arrays["regions"] = r.astype(np.float16)
                with atomic_path(self._chunk(kind, view, c, regions)) as tmp:
                    np.savez(tmp, **arrays)  # type: ignore[arg-type]
                done = n_chunks - len(todo) + k + 1
                secs = time.perf_counter() - start
                rate = (k + 1) * CHUNK / secs
                self.progress[f"{kind}-{view}"] = {"chunks_done": done, "chunks": n_chunks}
                write_json(self.progress_file, self.progress, indent=1)
                progress.update(
                    1,
                    "%s/%s: chunk %d/%d (%.1f img/s, ~%.0f s left)",
                    kind,
                    view,
                    done,
                    n_chunks,
                    rate,
                    (n_chunks - done) * CHUNK / rate,
                )
        elapsed = time.perf_counter() - start
        self._assemble(kind, view, n_chunks, regions)
        return elapsed

    def _chunk(self, kind: str, view: str, c: int, regions: bool) -> Path:
        # A chunk without region grids must not pass for one with them (added to a cache later).
        return self.chunk_dir / f"{kind}{'+regions' if regions else ''}-{view}-{c:05d}.npz"

    def _assemble(self, kind: str, view: str, n_chunks: int, regions: bool) -> None:
        parts = [np.load(self._chunk(kind, view, c, regions)) for c in range(n_chunks)]
        if regions:
            with atomic_path(self.path / f"{regions_kind(kind)}-{view}.npy") as tmp:
                np.save(tmp, np.concatenate([p["regions"] for p in parts]))
        with atomic_path(self.path / f"{kind}-{view}.npy") as tmp:
            np.save(tmp, np.concatenate([p["global"] for p in parts]))
        for c in range(n_chunks):
            self._chunk(kind, view, c, regions).unlink()


def build_cache(
    data: STLData,
    backbone: Backbone,
    cache_root: Path,
    views: Sequence[str] = DEFAULT_VIEWS,
    batch_size: int = 32,
    engine: str = "auto",
) -> tuple[FeatureCache, float]:
    """The complete cache for ``data`` and ``backbone`` (computing what is missing), and the
    seconds this call spent computing features (0 when all was cached)."""
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown views {sorted(unknown)}; choose from {list(VIEWS)}")
    path = Path(cache_root) / cache_key(backbone, data)
    path.mkdir(parents=True, exist_ok=True)
    if (path / "meta.json").is_file():
        meta = dict(json.loads((path / "meta.json").read_text()))
    else:  # a new cache directory: what goes into it
        crops, examples, dropped = ctl_examples(data)
        kept = set(data.category_names())
        products = [p for p in data.available_products() if data.categories[p] in kept]
        meta = {
            "backbone": backbone.describe(),
            "data": str(data.root.resolve()),
            "crop_rules": {"grow": crop.GROW, "min_area_fraction": crop.MIN_AREA_FRACTION},
            "crops": crops,
            "examples": examples,
            "crop_stats": dropped,
            "products": products,
            "product_categories": [data.categories[p] for p in products],
            "views": [],
            "seconds": 0.0,
        }
        write_json(path / "meta.json", meta, indent=1)
    crops_list = meta["crops"]
    products = meta["products"]
    log.info(
        "feature cache %s: %d crops (%d examples), %d products, views %s",
        path,
        len(crops_list),
        len(meta["examples"]),
        len(products),
        list(views),
    )

    def load_crop(i: int) -> Image.Image:
        scene, box = crops_list[i]
        return rgb(data.scene_path(scene)).crop(tuple(box))

    def load_product(i: int) -> Image.Image:
        return rgb(data.product_path(products[i]), backbone.spec.size)

    builder = ChunkBuilder(path, backbone, batch_size, engine)
    scenes, prods = (len(crops_list), load_crop), (len(products), load_product)
    return builder.fill_views(meta, views, scenes, prods)


class FeatureOptions(Options, prog="ctl features", settings=TrainingSettings):
    data: Path = option(help="STL data directory", setting="data_dir")
    cache: Path = option(help="feature cache root", setting="features_dir")
    backbone: str = option(help="frozen backbone", setting="backbone", choices=BACKBONES)
    backbone_weights: Path | None = option(
        help="weights file overriding the packaged/cached one", setting="backbone_weights"
    )
    views: tuple[str, ...] = option(DEFAULT_VIEWS, f"comma-separated views of {', '.join(VIEWS)}")
    batch_size_features: int = option(32, "images per backbone call")
    engine: str = option("auto", "auto: ONNX Runtime when installed", choices=ENGINES)


def load_cache(opts: FeatureOptions) -> tuple[FeatureCache, float]:
    """The feature cache the options name, built where it is missing (see ``build_cache``)."""
    data = STLData.load(opts.data)
    backbone = build_backbone(opts.backbone, opts.backbone_weights)
    return build_cache(
        data,
        backbone,
        opts.cache,
        opts.views,
        opts.batch_size_features,
        opts.engine,
    )


def main(argv: list[str]) -> int:
    """``ctl features``: build (or finish) the feature cache and print where it is."""
    cache, spent = load_cache(FeatureOptions.parse(argv))
    print(
        json.dumps(
            {
                "cache": str(cache.path),
                "examples": len(cache.examples),
                "products": len(cache.products),
                "views": cache.views,
                "seconds_this_run": round(spent, 1),
                "seconds_total": round(cache.meta["seconds"], 1),
            }
        )
    )
    return 0
