"""Replicas follow one catalog: every process serves what was published last, by whichever
replica or ``ctl`` command published it, through the zero-downtime reload.

Two paths, so that the bound holds with or without Redis. A replica that publishes (admin
writes, ``/admin/reload``) announces it on a Redis channel, which wakes the others at once;
every process also polls the index store's ``CURRENT`` pointer and the artifacts manifest every
``CTL_FOLLOW_INTERVAL_S`` seconds, which covers ``ctl index``/``ctl export`` runs, a lost
message, and deployments without Redis. Staleness after a publish is the time to load the new
version plus ~1 ms with Redis, or plus at most one interval without.

Product attributes (``PATCH /admin/products/{id}``, ``ctl catalog``) follow the same two paths:
the store's revision is polled and announced like a version, and a change is applied to the
catalog served now as a new attribute snapshot (the rows changed since the one held), without
reloading the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from index.store import IndexStore
from runtime.artifacts import MANIFEST_FILE
from service.config import Settings
from service.serving import ServingManager

log = logging.getLogger(__name__)

CHANNEL = "versions"


def published_versions(artifacts_dir: Path) -> tuple[str | None, str | None]:
    """(model version, index version) on disk now; ``None`` where there is none yet.

    Reads the manifest's version without verifying checksums: loading verifies them.
    """
    try:
        model = json.loads((artifacts_dir / MANIFEST_FILE).read_text()).get("version")
    except (OSError, ValueError):
        model = None
    return model, IndexStore.for_artifacts(artifacts_dir).current()


class Follower:
    """Reloads the manager when the versions on disk differ from those it serves."""

    def __init__(self, manager: ServingManager, settings: Settings) -> None:
        self._manager, self._settings = manager, settings
        self._wake = asyncio.Event()
        self._redis = (
            Redis.from_url(settings.redis_url, socket_connect_timeout=1.0, socket_timeout=None)
            if settings.redis_url
            else None
        )
        self._channel = settings.redis_prefix + CHANNEL
        self._tasks: list[asyncio.Task[None]] = []
        self._seen = published_versions(settings.artifacts_dir)
        self._attributes = IndexStore.for_artifacts(settings.artifacts_dir).attributes
        self._syncing = asyncio.Lock()

    def start(self) -> None:
        """Poll (when the interval is positive) and listen (when Redis is configured)."""
        if self._settings.follow_interval_s > 0 or self._redis is not None:
            self._tasks.append(asyncio.create_task(self._follow(), name="follow-versions"))
        if self._redis is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="follow-announcements"))

    async def announce(self) -> None:
        """Tell the other replicas that new versions are published (best effort)."""
        if self._redis is None:
            return
        try:
            await asyncio.wait_for(self._redis.publish(self._channel, b"1"), timeout=1.0)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not announce new versions on Redis (others poll): %s", exc)

    async def check(self) -> bool:
        """Load the versions on disk once they change; True when it loaded them.

        Acts on a change of what is published, not on a difference from what is served, so a
        version that fails to load is tried once (the old one keeps serving) and not again until
        the next publish.
        """
        published = await asyncio.to_thread(published_versions, self._settings.artifacts_dir)
        if published == self._seen:
            await self.sync_attributes()
            return False
        self._seen = published
        current = self._manager.current
        if current is None or published == (current.model_version, current.index_version):
            return False  # this process published it (or loaded it) itself
        try:
            await self._manager.load(
                reload_encoder=published[0] != current.model_version, unless_serving=published
            )
        except Exception as exc:  # keep serving the old versions
            log.warning("cannot follow model %s / index %s: %s", *published, exc)
            return False
        if self._manager.current is current:
            return False  # this process's own admin route loaded it meanwhile
        log.info("followed the published versions: model %s / index %s", *published)
        return True

    async def sync_attributes(self) -> bool:
        """Serve the attributes written since the revision the current catalog holds; True
        when there were any. Concurrent calls run one after the other (each sees the last)."""
        async with self._syncing:
            current = self._manager.current
            if current is None:
                return False
            catalog = current.catalog
            held = catalog.attributes
            try:
                revision = await asyncio.to_thread(self._attributes.revision)
                if revision == held.revision:
                    return False
                # A lower revision: the store was replaced (restored); take it whole.
                since = held.revision if revision > held.revision else 0
                revision, changed = await asyncio.to_thread(self._attributes.read, since)
            except Exception as exc:  # keep serving the attributes held
                log.warning("cannot read product attributes: %s", exc)
                return False
            apply = catalog.attributes_at if since == 0 else held.apply
            catalog.attributes = await asyncio.to_thread(apply, revision, changed)
            log.debug("attributes at revision %d (%d changed)", revision, len(changed))
            return True

    async def _follow(self) -> None:
        interval = self._settings.follow_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval if interval > 0 else None)
            self._wake.clear()
            await self.check()

    async def _listen(self) -> None:
        assert self._redis is not None
        backoff = 0.5
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    backoff = 0.5
                    # A message may have been missed while not subscribed.
                    self._wake.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except (RedisError, OSError) as exc:
                log.info("version announcements unavailable (%s); polling meanwhile", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._redis is not None:
            await self._redis.aclose()
