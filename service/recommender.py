"""The request pipeline behind the recommendation routes, with both cache layers.

A scene is embedded once per distinct image (sha256 of its bytes, per model version) and its
embedding cached, so other categories and other k reuse it; results are cached per image,
category, k, model version and index version. Decoding and encoding run off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass

from fastapi import UploadFile

from index.search import recommend
from model.runtime import SceneEmbedding
from service.budget import UploadBudget
from service.cache import Cache, pack_embedding, unpack_embedding
from service.config import Settings
from service.digests import DigestMemo
from service.images import Upload, decode_image, read_upload, too_large
from service.metrics import Metrics
from service.serving import Serving

INLINE_SEARCH_MAX = 10_000
"""Categories up to this many products are searched on the event loop (see ``compute``)."""


@dataclass(frozen=True)
class Pipeline:
    """The per-request collaborators, bundled so routes pass one object."""

    serving: Serving
    cache: Cache
    metrics: Metrics
    settings: Settings
    digests: DigestMemo | None = None
    budget: UploadBudget | None = None

    @asynccontextmanager
    async def upload(self, image: UploadFile) -> AsyncIterator[Upload]:
        """The uploaded file (413 over the size limit, 422 when empty) and its sha256, held
        in memory only inside the block and only with its size taken from the upload budget
        (waiting for room; 503 when none comes in time)."""
        limit = self.settings.max_upload_bytes
        if image.size is not None and image.size > limit:
            raise too_large(limit)
        size = max(1, image.size if image.size is not None else limit)
        async with self.budget.hold(size) if self.budget is not None else nullcontext():
            yield await read_upload(image, limit, self.digests)

    def _embedding_key(self, sha256: str) -> str:
        return f"emb:{self.serving.model_version}:{sha256}"

    async def embed(self, upload: Upload) -> tuple[SceneEmbedding, bool]:
        """The scene embedding of ``upload`` and whether it came from the cache."""
        return await self._embed(upload, await self.cache.get(self._embedding_key(upload.sha256)))

    async def _embed(self, upload: Upload, cached: bytes | None) -> tuple[SceneEmbedding, bool]:
        """``cached`` (the embedding cache's bytes for ``upload``) or a pass through the encoder."""
        emb = unpack_embedding(cached) if cached is not None else None
        if emb is not None:
            self.metrics.cache_hits.inc("embedding")
            return emb, True
        self.metrics.cache_misses.inc("embedding")
        max_pixels, encoder = self.settings.max_image_pixels, self.serving.encoder
        emb = await self.serving.batcher.submit(
            upload, lambda u: encoder.prepare(decode_image(u, max_pixels, encoder.input_size))
        )
        await self.cache.set(self._embedding_key(upload.sha256), pack_embedding(emb))
        return emb, False

    def _result_key(self, sha256: str, category: str, k: int) -> str:
        s = self.serving
        return f"res:{s.model_version}:{s.index_version}:{sha256}:{category}:{k}"

    def response_key(self, sha256: str, category: str, k: int, explain: bool) -> str:
        """The cache key of a whole ``/complete-the-look`` answer."""
        return f"resp:{self._result_key(sha256, category, k)}:{int(explain)}"

    async def compute(self, sha256: str, emb: SceneEmbedding, category: str, k: int) -> list[dict]:
        """Search the catalog for ``category`` and cache the result."""
        cat_idx = self.serving.category_index(category)
        catalog = self.serving.catalog
        search = functools.partial(
            recommend, catalog, emb, cat_idx, category, k, self.settings.rerank_candidates
        )
        # A small category's exact search (+ rescoring) takes 0.1-0.4 ms: about the cost of the
        # hop to a worker thread and back, so it runs right here; big (ANN) ones go to a thread.
        if catalog.count(category) <= INLINE_SEARCH_MAX:
            scored = search()
        else:
            scored = await asyncio.to_thread(search)
        result = [
            {
                "id": s.id,
                "category": s.category,
                "d_star": float(s.d_star),
                "d_global": float(s.d_global),
                "d_local": float(s.d_local),
            }
            for s in scored
        ]
        await self.cache.set(self._result_key(sha256, category, k), json.dumps(result).encode())
        return result

    async def recommend(
        self, upload: Upload, categories: list[str], k: int
    ) -> tuple[dict[str, list[dict]], bool]:
        """Results per category (cached where possible; at most one encoder pass) and whether
        every one of them came from the cache.

        The cached results and the cached embedding are looked up together: one round trip to
        Redis instead of one for each (the embedding's bytes are unused when every result is
        cached, which the response cache in front makes the rare case).
        """
        keys = [self._result_key(upload.sha256, category, k) for category in categories]
        *cached, embedding = await self.cache.get_many([*keys, self._embedding_key(upload.sha256)])
        results: dict[str, list[dict]] = {}
        missing: list[str] = []
        for category, data in zip(categories, cached, strict=True):
            if data is None:
                self.metrics.cache_misses.inc("result")
                missing.append(category)
            else:
                self.metrics.cache_hits.inc("result")
                results[category] = json.loads(data)
        if missing:
            emb, _ = await self._embed(upload, embedding)
            for category in missing:
                results[category] = await self.compute(upload.sha256, emb, category, k)
        return {c: results[c] for c in categories}, not missing


def with_ranks(items: list[dict]) -> list[dict]:
    """Add the 1-based rank and the image URL that the response shows for each product."""
    return [
        {**item, "rank": rank, "image_url": f"/products/{item['id']}/image"}
        for rank, item in enumerate(items, start=1)
    ]


def attention_grid(emb: SceneEmbedding, cat_idx: int) -> list[list[float]]:
    """The category's attention over the regions as a square grid (rows top to bottom)."""
    weights = emb.attention[cat_idx]
    side = round(len(weights) ** 0.5)
    return [[float(w) for w in weights[r * side : (r + 1) * side]] for r in range(side)]
