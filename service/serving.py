"""What one request serves from: an encoder, a catalog index and their micro-batcher, as one unit.

A request takes the current :class:`Serving` once and uses it to the end, so an admin reload
can swap in a new one at any moment: requests already running finish on the old encoder and
index, and the old batcher is closed only after the last of them let go.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
from PIL import Image

from index.search import CatalogIndex, faiss_gpu_fallback_warning, set_search_threads
from index.store import IndexStore
from runtime.artifacts import ArtifactError
from runtime.encoder import Encoder, OnnxEncoder, SceneEmbedding
from runtime.errors import quote
from runtime.sessions import gpu_fallback_warning
from service.batcher import MicroBatcher
from service.config import Settings
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

EncoderLoader = Callable[[Settings], Encoder]
CatalogLoader = Callable[[Settings], CatalogIndex]


class UnknownCategory(ValueError):
    """A category the catalog cannot recommend; the message lists the valid ones."""


def encoder_lanes(settings: Settings) -> int:
    """How many encoder calls may overlap: ``encoder_lanes``, or one per core up to 4."""
    return settings.encoder_lanes or min(4, os.cpu_count() or 1)


def max_batch(settings: Settings, lanes: int) -> int:
    """Scenes per encoder call: ``batch_max_size``, or 4 with several lanes, 16 with one."""
    return settings.batch_max_size or (4 if lanes > 1 else 16)


def load_onnx_encoder(settings: Settings) -> Encoder:
    """The exported encoders in ``settings.artifacts_dir`` (checksums verified), warmed up."""
    encoder = OnnxEncoder.from_artifacts(
        settings.artifacts_dir,
        device=settings.device,
        threads=settings.inference_threads,
        lanes=encoder_lanes(settings),
    )
    encoder.warm_up(max_batch(settings, encoder.lanes))
    return encoder


def load_current_catalog(settings: Settings) -> CatalogIndex:
    """The index version that ``artifacts/index/CURRENT`` names."""
    set_search_threads(settings.search_threads)
    return IndexStore.for_artifacts(settings.artifacts_dir).load(device=settings.device)


class Serving:
    """Encoder + catalog + batcher, with a count of the requests using them."""

    def __init__(
        self,
        encoder: Encoder,
        catalog: CatalogIndex,
        executor: Executor,
        settings: Settings,
        metrics: ServiceMetrics,
    ) -> None:
        if catalog.model_version != encoder.version:
            raise ArtifactError(
                f"index version {catalog.version} was built with model {catalog.model_version}, "
                f"but the encoder is {encoder.version}; rebuild the index with 'ctl index build'"
            )
        self.encoder, self.catalog, self._executor = encoder, catalog, executor
        self.model_version, self.index_version = encoder.version, catalog.version
        known = set(encoder.categories)
        self.categories = [c for c in catalog.categories if c in known]
        self._cat_index = {c: i for i, c in enumerate(encoder.categories)}

        def on_batch(size: int, seconds: float) -> None:
            metrics.batch_size.observe(size)
            metrics.encoder_seconds.observe(seconds)

        self.batcher: MicroBatcher[Image.Image, SceneEmbedding] = MicroBatcher(
            encoder.embed_scenes,
            executor,
            max_batch(settings, encoder.lanes),
            settings.batch_max_wait_ms / 1000.0,
            on_batch,
            concurrency=encoder.lanes,
        )
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def versions(self) -> dict[str, str]:
        return {"model_version": self.model_version, "index_version": self.index_version}

    @property
    def warnings(self) -> list[str]:
        """GPU builds installed but running on the CPU (reported by /readyz and at load)."""
        found = (
            gpu_fallback_warning(self.encoder.providers),
            faiss_gpu_fallback_warning(self.catalog.faiss_device),
        )
        return [w for w in found if w]

    def category_index(self, category: str) -> int:
        """The model's row for ``category``; :class:`UnknownCategory` if it cannot be served."""
        if category not in self._cat_index or category not in self.categories:
            raise UnknownCategory(
                f"unknown category {quote(category)}; "
                f"valid categories: {', '.join(self.categories)}"
            )
        return self._cat_index[category]

    async def embed_product(self, image: Image.Image) -> np.ndarray:
        """The product embedding (D,) of one photo, computed on the encoder's thread."""
        loop = asyncio.get_running_loop()
        f_p = await loop.run_in_executor(self._executor, self.encoder.embed_products, [image])
        return np.asarray(f_p[0], np.float32)

    def acquire(self) -> None:
        self._users += 1
        self._idle.clear()

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._idle.set()

    async def retire(self) -> None:
        """Wait until no request uses this unit any more, then stop its batcher."""
        await self._idle.wait()
        await self.batcher.close()
        log.info("retired model %s / index %s", self.model_version, self.index_version)


class ServingManager:
    """Owns the current :class:`Serving` and swaps it on reload without failing any request."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        executor: Executor,
        encoder_loader: EncoderLoader,
        catalog_loader: CatalogLoader,
    ) -> None:
        self._settings, self._metrics, self._executor = settings, metrics, executor
        self._encoder_loader, self._catalog_loader = encoder_loader, catalog_loader
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self.current: Serving | None = None

    async def load(
        self,
        reload_encoder: bool = True,
        unless_serving: tuple[str | None, str | None] = (None, None),
    ) -> Serving:
        """Load the newest encoder and index (off the event loop) and make them current.

        ``reload_encoder=False`` keeps the current encoder (a catalog update). Returns the
        serving unit it replaced (or the new one on the first load); the old one keeps
        serving the requests that hold it and is retired when they are done.

        ``unless_serving``: the (model, index) versions published; when they are served
        already, nothing is loaded and the current unit is returned. Checked under the lock:
        the process that published a version and its follower, which both see the new
        version, load it once between them.
        """
        async with self._lock:
            old = self.current
            if old is not None and unless_serving == (old.model_version, old.index_version):
                return old
            if reload_encoder or old is None:
                encoder = await asyncio.to_thread(self._encoder_loader, self._settings)
            else:
                encoder = old.encoder
            catalog = await asyncio.to_thread(self._catalog_loader, self._settings)
            new = Serving(encoder, catalog, self._executor, self._settings, self._metrics)
            self.current = new
            self._metrics.serving(new.model_version, new.index_version)
            log.info(
                "serving model %s / index %s (%d categories); encoder on %s, FAISS on %s",
                new.model_version,
                new.index_version,
                len(new.categories),
                encoder.providers,
                catalog.faiss_device,
            )
            for warning in new.warnings:
                log.warning(warning)
            if old is None:
                return new
            task = asyncio.create_task(old.retire())
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            return old

    async def close(self) -> None:
        """Retire the current unit and wait for every retiring one."""
        if self.current is not None:
            await self.current.retire()
        await asyncio.gather(*self._retiring)
