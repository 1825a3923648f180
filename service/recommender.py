"""The request pipeline behind the recommendation routes, with both cache layers.

A scene is embedded once per distinct image (sha256 of its bytes, per model version) and its
embedding cached, so other categories and other k reuse it, and a stored scene (``/scenes``)
is answered from it without an upload; results are cached per image, category, k, filter, model
version, index version and the revision of the category's attributes (so a stock change is never
served from the cache once this process follows it). A result is cached as the answers show it:
the JSON of its products (``list[Recommended]``), attributes included (from the snapshot the
request took, whose revision is in the key), written once and spliced into every answer as it is
(``service.answers``). Decoding and encoding run off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NamedTuple

from fastapi import HTTPException, UploadFile, status
from pydantic_core import to_json

from index.attributes import CatalogAttributes
from index.filters import DEFAULT_FILTER, ProductFilter
from index.search import Scored, recommend
from runtime.decode import DecodeError, decoded_bytes, open_image
from runtime.encoder import SceneEmbedding
from service.budget import UploadBudget
from service.cache import Cache, pack_embedding, unpack_embedding
from service.config import Settings
from service.images import Upload, decode_upload, read_upload, too_large
from service.metrics import ServiceMetrics
from service.schemas import Recommended, image_url
from service.serving import Serving

INLINE_SEARCH_MAX = 10_000
"""Categories up to this many products are searched on the event loop (see ``compute``)."""


PRODUCT_FIELDS = {name: field.get_default() for name, field in Recommended.model_fields.items()}
"""An answered product's fields in the response model's order, each with its default."""


def products_json(ranked: list[Scored], attributes: CatalogAttributes) -> bytes:
    """``ranked`` as the answers show it: ``list[Recommended]``'s JSON, byte for byte as pydantic
    writes it (the stored attributes were validated as the model's fields when written)."""
    return to_json(
        [
            {
                **PRODUCT_FIELDS,
                **attributes.record(r.id),
                **vars(r),
                "rank": n,
                "image_url": image_url(r.id),
            }
            for n, r in enumerate(ranked, start=1)
        ]
    )


class Recommendations(NamedTuple):
    """Results per category (the JSON of their products), whether all came from the cache, and
    the scene embedding when it was needed (``None`` when every result was cached and nothing
    asked for it)."""

    results: dict[str, bytes]
    cached: bool
    embedding: SceneEmbedding | None


@dataclass(frozen=True)
class Pipeline:
    """The per-request collaborators, bundled so routes pass one object."""

    serving: Serving
    cache: Cache
    metrics: ServiceMetrics
    settings: Settings
    budget: UploadBudget
    pixels: UploadBudget
    attributes: CatalogAttributes
    """The attribute snapshot this request filters with and shows (one revision throughout)."""

    @asynccontextmanager
    async def upload(self, image: UploadFile) -> AsyncIterator[Upload]:
        """The uploaded file (413 over the size limit, 422 when empty) and its sha256, held
        in memory only inside the block and only with its size taken from the upload budget
        (waiting for room; 503 when none comes in time)."""
        limit = self.settings.max_upload_bytes
        if image.size is not None and image.size > limit:
            raise too_large(limit)
        size = max(1, image.size if image.size is not None else limit)
        async with self.budget.hold(size):
            yield await read_upload(image, limit)

    @asynccontextmanager
    async def decoding(self, upload: Upload, min_size: int = 0) -> AsyncIterator[None]:
        """Room in the pixel budget for ``upload`` decoded (as its header says, at the scale
        ``min_size`` allows), held for the block: decode and prepare the image inside it."""
        try:
            image = open_image(upload.data, self.settings.max_image_pixels, min_size)
        except DecodeError:
            need = 1  # the decode inside the block says what is wrong
        else:
            need = decoded_bytes(image)
        async with self.pixels.hold(need):
            yield

    def _embedding_key(self, sha256: str) -> str:
        return f"emb:{self.serving.model_version}:{sha256}"

    async def embed(self, upload: Upload) -> tuple[SceneEmbedding, bool]:
        """The scene embedding of ``upload`` and whether it came from the cache."""
        (cached,) = await self.cache.get_many([self._embedding_key(upload.sha256)])
        return await self._embedding(upload.sha256, upload, cached)

    async def store_scene(self, upload: Upload) -> tuple[bool, bool]:
        """Embed ``upload`` (or find its embedding) and store it for the GETs of ``/scenes``
        with a full expiry again: (whether it was known, whether every replica can read it)."""
        key = self._embedding_key(upload.sha256)
        (cached,) = await self.cache.get_many([key])
        emb, known = await self._embedding(upload.sha256, upload, cached, write=False)
        data = cached if known and cached is not None else pack_embedding(emb)
        return known, await self.cache.keep(key, data)

    async def _embedding(
        self, sha256: str, upload: Upload | None, cached: bytes | None, write: bool = True
    ) -> tuple[SceneEmbedding, bool]:
        """``cached`` (the embedding cache's bytes for the scene), else a pass of ``upload``
        through the encoder, cached unless ``write`` is false; without an upload (a stored
        scene), 404."""
        emb = unpack_embedding(cached) if cached is not None else None
        if emb is not None:
            self.metrics.cache_hits["embedding"].inc()
            return emb, True
        self.metrics.cache_misses["embedding"].inc()
        if upload is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                f"scene {sha256} is unknown or expired (or the model changed since it was "
                "uploaded); upload the photo again with POST /scenes",
            )
        max_pixels, encoder = self.settings.max_image_pixels, self.serving.encoder
        async with self.decoding(upload, encoder.input_size):
            emb = await self.serving.batcher.submit(
                upload, lambda u: encoder.prepare(decode_upload(u, max_pixels, encoder.input_size))
            )
        if write:
            await self.cache.set(self._embedding_key(sha256), pack_embedding(emb))
        return emb, False

    def _result_key(self, sha256: str, category: str, k: int, flt: ProductFilter) -> str:
        s = self.serving
        attrs = self.attributes.category(category).revision
        return (
            f"products:{s.model_version}:{s.index_version}:{attrs}:{flt.cache_key()}:"
            f"{sha256}:{category}:{k}"
        )

    async def compute(
        self,
        sha256: str,
        emb: SceneEmbedding,
        category: str,
        row: int,
        k: int,
        flt: ProductFilter = DEFAULT_FILTER,
    ) -> bytes:
        """Search the catalog for ``category`` (the model's category ``row``) among the products
        that pass ``flt``; the result as the answers show it (:func:`products_json`), cached."""
        catalog = self.serving.catalog
        search = functools.partial(
            recommend,
            catalog,
            emb,
            row,
            category,
            k,
            self.settings.rerank_candidates,
            flt,
            self.attributes,
        )
        # A small category's exact search (+ rescoring) costs about as much as the hop to a
        # worker thread and back, so it runs right here; big (ANN) ones go to a thread.
        if catalog.count(category) <= INLINE_SEARCH_MAX:
            ranked = search()
        else:
            ranked = await asyncio.to_thread(search)
        result = products_json(ranked, self.attributes)
        await self.cache.set(self._result_key(sha256, category, k, flt), result)
        return result

    async def recommend(
        self,
        sha256: str,
        categories: Mapping[str, int],
        k: int,
        upload: Upload | None = None,
        need_embedding: bool = False,
        flt: ProductFilter = DEFAULT_FILTER,
    ) -> Recommendations:
        """Results for each of ``categories`` (name -> the model's category row), cached where
        possible, with at most one encoder pass (of ``upload``; without one, the scene's stored
        embedding must exist, else 404), among the products that pass ``flt``.

        The cached results and the cached embedding are looked up together, in one round trip
        to Redis; the embedding found or computed is returned, so nothing is encoded twice.
        """
        keys = [self._result_key(sha256, category, k, flt) for category in categories]
        *cached, embedding = await self.cache.get_many([*keys, self._embedding_key(sha256)])
        results = {c: data for c, data in zip(categories, cached, strict=True) if data is not None}
        missing = [category for category in categories if category not in results]
        self.metrics.cache_hits["result"].inc(len(results))
        self.metrics.cache_misses["result"].inc(len(missing))
        emb = None
        if missing or need_embedding or upload is None:
            emb, _ = await self._embedding(sha256, upload, embedding)
            for category in missing:
                results[category] = await self.compute(
                    sha256, emb, category, categories[category], k, flt
                )
        return Recommendations({c: results[c] for c in categories}, not missing, emb)


def attention_grid(emb: SceneEmbedding | None, row: int) -> list[list[float]]:
    """The attention of the model's category ``row`` over the regions as a square grid (rows
    top to bottom); ``emb`` is there when it was asked for (``need_embedding``)."""
    assert emb is not None
    weights = emb.attention[row]
    side = round(len(weights) ** 0.5)
    return [[float(w) for w in weights[r * side : (r + 1) * side]] for r in range(side)]
