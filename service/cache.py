"""Byte caches for scene embeddings and results: Redis when configured, an in-process LRU otherwise.

A cache is an optimisation, never a dependency: when Redis fails or is slow, the call is
bypassed (logged once per outage, counted) and Redis is left alone for a while, so a dead server
does not cost every request a timeout: ``retry_min_s`` after a first failure, doubling with each
failed retry up to ``retry_s``, so one slow moment costs a fraction of a second and a dead
server one timeout per ``retry_s``. A pooled connection that Redis closed (a restart) is retried
once on a fresh one (redis-py's ``Retry``) and is not a failure.

Every key names a value that never changes (the model and index versions and the image's sha256
are in it), so with Redis an in-process LRU sits in front of it: a repeat is answered without a
round trip (docs/performance.md), and replicas still share what each computed through Redis.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from cachetools import TTLCache
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from runtime.encoder import SceneEmbedding
from service.config import Settings
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

MAX_QUEUED = 1024
"""Redis writes queued at most: a stuck Redis must not hold on to the service's memory."""


class Cache(Protocol):
    """An async byte store with a time to live; misses and failures both return ``None``."""

    backend: str
    keeps: bool
    """Whether a value set may be read back (``False``: a cache of size 0)."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in order (one round trip where that means anything)."""
        ...

    async def set(self, key: str, value: bytes) -> None: ...

    async def keep(self, key: str, value: bytes) -> bool:
        """Store ``value`` now (not queued), its expiry starting anew (a stored scene); whether
        it is where every replica reads (``False``: Redis was unreachable, only this process
        has it)."""
        ...

    async def close(self) -> None:
        """Finish the writes under way and let go of connections and memory."""
        ...


class MemoryCache:
    """A bounded LRU of bytes with a TTL, for a single process (the embedded default)."""

    backend = "memory"

    def __init__(self, max_items: int, ttl_s: float) -> None:
        self.keeps = max_items > 0
        # cachetools' TTLCache evicts the least recently used item when full; it needs a size
        # of at least 1, so a size of 0 is one that is never set (it stays empty).
        self._items: TTLCache[str, bytes] = TTLCache(max(1, max_items), ttl_s)
        self._lock = threading.Lock()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self._lock:
            return [self._items.get(key) for key in keys]

    async def set(self, key: str, value: bytes) -> None:
        if self.keeps:
            with self._lock:
                self._items[key] = value

    async def keep(self, key: str, value: bytes) -> bool:
        """Set anew: a TTLCache entry set again expires ``ttl_s`` from now."""
        await self.set(key, value)
        return True

    async def close(self) -> None:
        with self._lock:
            self._items.clear()


class RedisCache:
    """Redis with short timeouts and a circuit breaker; failures are counted and bypassed.

    Writes are queued and sent together, in one pipeline, once the writer's current step is
    done: a cache miss writes its keys (embedding, results) one after the other, and each would
    be a round trip of its own. Nothing reads its own write back soon after. ``clock`` times the
    pauses after failures (tests pass one they move).
    """

    backend = "redis"
    keeps = True

    def __init__(
        self,
        url: str,
        settings: Settings,
        metrics: ServiceMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._redis = Redis.from_url(
            url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_connect_timeout_s,
            # Once, on a fresh connection, for a connection error only (a pooled connection
            # that a restarted Redis closed); a timeout is not retried (a slow Redis).
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._prefix, self._ttl = settings.redis_prefix, settings.cache_ttl_s
        self._retry_s = settings.redis_retry_s
        self._retry_min_s = min(settings.redis_retry_min_s, settings.redis_retry_s)
        self._metrics = metrics
        self._down_until = 0.0
        self._backoff = 0.0  # the current pause; 0 while Redis answers
        self._down = False
        self._queued: list[tuple[str, bytes]] = []
        self._writer: asyncio.Task[None] | None = None

    def _available(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self, op: str, exc: Exception) -> None:
        self._metrics.cache_errors.labels(self.backend).inc()
        now = self._clock()
        if now < self._down_until:
            return  # a call begun before the pause started: that failure is counted already
        self._backoff = min(self._retry_s, 2 * self._backoff or self._retry_min_s)
        self._down_until = now + self._backoff
        if not self._down:
            log.warning(
                "Redis %s failed (%s); bypassing the cache for %.2fs (backing off up to %.1fs)",
                op,
                exc,
                self._backoff,
                self._retry_s,
            )
        self._down = True

    def _succeeded(self) -> None:
        if self._down:
            log.info("Redis is back; cache enabled again")
        self._down = False
        self._backoff = 0.0

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            values = await self._redis.mget([self._prefix + key for key in keys])
        except Exception as exc:
            self._failed("get", exc)
            return [None] * len(keys)
        self._succeeded()
        return [value if isinstance(value, bytes) else None for value in values]

    async def set(self, key: str, value: bytes) -> None:
        """Queue the write (dropped while Redis is bypassed, or past :data:`MAX_QUEUED`)."""
        if not self._available() or len(self._queued) >= MAX_QUEUED:
            return
        self._queued.append((self._prefix + key, value))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())

    async def keep(self, key: str, value: bytes) -> bool:
        """One SET with the full expiry, awaited (a stored scene must reach Redis, or the
        caller must know it did not); ``False`` while Redis is bypassed or when it fails."""
        if not self._available():
            return False
        try:
            await self._redis.set(self._prefix + key, value, ex=self._ttl)
        except Exception as exc:
            self._failed("set", exc)
            return False
        self._succeeded()
        return True

    async def _write(self) -> None:
        """Send the queued writes, a pipeline at a time, until none is left."""
        while self._queued and self._available():
            batch, self._queued = self._queued, []
            try:
                pipe = self._redis.pipeline(transaction=False)
                for key, value in batch:
                    pipe.set(key, value, ex=self._ttl)
                await pipe.execute()
            except Exception as exc:
                self._failed("set", exc)
            else:
                self._succeeded()
        self._queued.clear()

    async def flush(self) -> None:
        """Wait until the queued writes are sent (or failed)."""
        if self._writer is not None:
            await self._writer

    async def close(self) -> None:
        await self.flush()
        await self._redis.aclose()


class TieredCache:
    """A near cache (in process) in front of a far one (Redis); the far one's backend name.

    Reads try near first and keep what far returns; writes go to both. Sound only because
    every value is immutable under its key (see the module docstring).
    """

    def __init__(self, near: Cache, far: Cache) -> None:
        self._near, self._far = near, far
        self.backend, self.keeps = far.backend, far.keeps

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        values = await self._near.get_many(keys)
        missing = [n for n, value in enumerate(values) if value is None]
        if missing:
            found = await self._far.get_many([keys[n] for n in missing])
            for n, value in zip(missing, found, strict=True):
                if value is not None:
                    values[n] = value
                    await self._near.set(keys[n], value)
        return values

    async def set(self, key: str, value: bytes) -> None:
        await self._near.set(key, value)
        await self._far.set(key, value)

    async def keep(self, key: str, value: bytes) -> bool:
        await self._near.keep(key, value)
        return await self._far.keep(key, value)

    async def close(self) -> None:
        await self._near.close()
        await self._far.close()


def _without_password(url: str) -> str:
    """``url`` for the log: a password in it (``redis://:secret@host``) is masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def make_cache(settings: Settings, metrics: ServiceMetrics) -> Cache:
    """Redis when ``CTL_REDIS_URL`` is set (behind an in-process LRU of ``cache_size`` entries
    unless that is 0), the in-process LRU alone otherwise."""
    if not settings.redis_url:
        log.info("cache: in-process LRU of %d entries", settings.cache_size)
        return MemoryCache(settings.cache_size, settings.cache_ttl_s)
    redis = RedisCache(settings.redis_url, settings, metrics)
    where = _without_password(settings.redis_url)
    if settings.cache_size == 0:
        log.info("cache: Redis at %s", where)
        return redis
    log.info("cache: Redis at %s behind an in-process LRU of %d items", where, settings.cache_size)
    return TieredCache(MemoryCache(settings.cache_size, settings.cache_ttl_s), redis)


_HEADER = struct.Struct("<III")


def pack_embedding(emb: SceneEmbedding) -> bytes:
    """A compact, exact byte form of a scene embedding (float32 arrays and their shapes)."""
    regions, dim = emb.f_i.shape
    cats = emb.attention.shape[0]
    return _HEADER.pack(dim, regions, cats) + b"".join(
        np.ascontiguousarray(a, dtype=np.float32).tobytes()
        for a in (emb.f_s, emb.f_i, emb.attention)
    )


def unpack_embedding(data: bytes) -> SceneEmbedding | None:
    """The inverse of :func:`pack_embedding`; ``None`` when malformed (treated as a miss)."""
    if len(data) < _HEADER.size:
        return None
    dim, regions, cats = _HEADER.unpack_from(data)
    sizes = (dim, regions * dim, cats * regions)
    if len(data) != _HEADER.size + 4 * sum(sizes):
        return None
    flat = np.frombuffer(data, np.float32, offset=_HEADER.size)
    f_s = flat[:dim]
    f_i = flat[dim : dim + sizes[1]].reshape(regions, dim)
    att = flat[dim + sizes[1] :].reshape(cats, regions)
    return SceneEmbedding(f_s=f_s, f_i=f_i, attention=att)
