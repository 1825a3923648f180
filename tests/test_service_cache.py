"""Both cache backends; Redis real, stopped in the middle of a test, and hanging."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from service_support import (
    free_port,
    post_scene,
    running,
    scene,
    serve,
    settings_for,
    tiny_artifacts,
)

from runtime.encoder import SceneEmbedding
from service.app import create_app
from service.cache import (
    Cache,
    MemoryCache,
    RedisCache,
    TieredCache,
    make_cache,
    pack_embedding,
    unpack_embedding,
)
from service.config import Settings
from service.metrics import ServiceMetrics


def _settings(
    timeout_s: float, prefix: str = "p:", retry_s: float = 5.0, retry_min_s: float = 0.1
) -> Settings:
    """A RedisCache's settings: a 60 s TTL, the reply timeout and the back-off."""
    return Settings(
        redis_prefix=prefix,
        cache_ttl_s=60,
        redis_timeout_s=timeout_s,
        redis_retry_s=retry_s,
        redis_retry_min_s=retry_min_s,
    )


class Clock:
    """A clock that stands still until the test moves it: the cache's pauses after a failure
    are timed by it, so no test races them with sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tiered(url: str, settings: Settings, clock: Clock, metrics: ServiceMetrics) -> Cache:
    """What ``make_cache`` makes for ``settings`` (Redis behind an in-process LRU), with the
    Redis pauses timed by ``clock``."""
    redis_cache = RedisCache(url, settings, metrics, clock)
    return TieredCache(MemoryCache(settings.cache_size, settings.cache_ttl_s), redis_cache)


async def get(cache: Cache, key: str) -> bytes | None:
    """One key's value."""
    (value,) = await cache.get_many([key])
    return value


def test_memory_cache_is_an_lru_with_ttl() -> None:
    async def run() -> None:
        cache = MemoryCache(max_items=2, ttl_s=60)
        await cache.set("a", b"1")
        await cache.set("b", b"2")
        assert await get(cache, "a") == b"1"  # a is now the most recent
        await cache.set("c", b"3")
        assert await get(cache, "b") is None
        assert (await get(cache, "a"), await get(cache, "c")) == (b"1", b"3")
        short = MemoryCache(max_items=2, ttl_s=0.01)
        await short.set("x", b"1")
        await asyncio.sleep(0.03)
        assert await get(short, "x") is None

    asyncio.run(run())


class CountingCache(MemoryCache):
    """A stand-in for Redis that counts the calls reaching it."""

    backend = "far"

    def __init__(self) -> None:
        super().__init__(max_items=100, ttl_s=60)
        self.gets = 0
        self.sets = 0

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.gets += len(keys)
        return await super().get_many(keys)

    async def set(self, key: str, value: bytes) -> None:
        self.sets += 1
        await super().set(key, value)


def test_tiered_cache_answers_repeats_without_the_far_cache() -> None:
    async def run() -> None:
        far = CountingCache()
        await far.set("shared", b"from another replica")
        cache = TieredCache(MemoryCache(max_items=10, ttl_s=60), far)
        assert cache.backend == "far"
        assert await get(cache, "missing") is None
        await cache.set("mine", b"1")
        assert far.sets == 2 and await get(far, "mine") == b"1"  # written through
        far.gets = 0
        for _ in range(3):
            assert await get(cache, "mine") == b"1"
            assert await get(cache, "shared") == b"from another replica"
        assert far.gets == 1, "only the first read of the other replica's value reached it"
        await far.set("other", b"2")
        assert await cache.get_many(["mine", "other", "missing"]) == [b"1", b"2", None]
        assert far.gets == 3, "only the keys missing in process were asked of far"
        await cache.close()
        assert await get(far, "mine") is None

    asyncio.run(run())


def test_the_log_never_shows_the_redis_password(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        for url, size in (("redis://app:s3cret@10.0.0.9:6380/2", 0), ("rediss://:s3cret@r:1", 5)):
            settings = Settings(redis_url=url, cache_size=size)
            with caplog.at_level(logging.INFO, logger="service.cache"):
                await make_cache(settings, ServiceMetrics()).close()  # connects to nothing
        assert "s3cret" not in caplog.text
        assert "redis://app:***@10.0.0.9:6380/2" in caplog.text
        assert "rediss://:***@r:1" in caplog.text

    asyncio.run(run())


def test_redis_write_failures_are_counted_and_bypassed() -> None:
    async def run() -> None:
        metrics = ServiceMetrics()
        url = f"redis://127.0.0.1:{free_port()}/0"
        cache = RedisCache(url, _settings(0.05, retry_s=60, retry_min_s=60), metrics)
        await cache.set("a", b"1")
        await cache.set("b", b"2")
        await cache.flush()
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 1, (
            "one pipeline, one failure"
        )
        await cache.set("c", b"3")  # bypassed for retry_s: not even tried
        assert await cache.get_many(["a", "c"]) == [None, None]
        await cache.close()
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 1

    asyncio.run(run())


def test_embedding_round_trip_and_malformed_bytes() -> None:
    rng = np.random.default_rng(0)
    emb = SceneEmbedding(
        rng.normal(size=8).astype(np.float32),
        rng.normal(size=(49, 8)).astype(np.float32),
        rng.random((3, 49)).astype(np.float32),
    )
    back = unpack_embedding(pack_embedding(emb))
    assert back is not None
    for a, b in ((emb.f_s, back.f_s), (emb.f_i, back.f_i), (emb.attention, back.attention)):
        np.testing.assert_array_equal(a, b)
    assert unpack_embedding(pack_embedding(emb)[:-4]) is None
    assert unpack_embedding(b"xx") is None


# ------------------------------------------------------------------ real Redis


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test alone; only its keys are deleted afterwards."""
    p = f"ctl-test-{uuid.uuid4().hex[:8]}:"
    yield p
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=p + "*"))
    if keys:
        r.delete(*keys)


@pytest.mark.redis
def test_redis_writes_of_one_moment_go_in_one_pipeline(redis_url: str, prefix: str) -> None:
    async def run() -> None:
        cache = RedisCache(redis_url, _settings(1.0, prefix=prefix), ServiceMetrics())
        pipelines: list[object] = []
        pipeline = cache._redis.pipeline

        def spy(*args: Any, **kwargs: Any) -> Any:
            pipelines.append(pipeline(*args, **kwargs))
            return pipelines[-1]

        cache._redis.pipeline = spy  # type: ignore[method-assign]
        for n in range(3):  # as a cache miss writes: embedding, result, answer
            await cache.set(f"k{n}", b"v%d" % n)
        await cache.flush()
        assert len(pipelines) == 1
        assert await cache.get_many(["k0", "k1", "k2", "nope"]) == [b"v0", b"v1", b"v2", None]
        assert 0 < redis.Redis.from_url(redis_url).ttl(prefix + "k1") <= 60
        await cache.close()

    asyncio.run(run())


@pytest.mark.redis
def test_results_and_embeddings_are_cached_in_redis(
    redis_url: str, prefix: str, stl_dir: Path
) -> None:
    settings = settings_for(
        tiny_artifacts(stl_dir), stl_dir, redis_url=redis_url, redis_prefix=prefix
    )
    data = scene(stl_dir, 20)
    r = redis.Redis.from_url(redis_url)
    with serve(settings) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        assert client.get("/readyz").json()["cache"] == "redis"
        first = post_scene(client, data, category).json()
        assert first["cached"] is False
        # Written behind the answer: the embedding and the result.
        assert _eventually(lambda: len(list(r.scan_iter(match=prefix + "*"))) == 2)
        saved = {k: v for k in r.scan_iter(match=prefix + "*") if (v := r.dump(k)) is not None}
        keys = {k.decode() for k in saved}
        assert any(k.startswith(prefix + "emb:") for k in keys)
        assert any(k.startswith(prefix + "products:") and category in k for k in keys)
        # A repeat comes from the in-process cache in front of Redis, without a round trip.
        r.delete(*saved)
        assert post_scene(client, data, category).json()["cached"] is True
        assert not list(r.scan_iter(match=prefix + "*")), "the repeat wrote to Redis again"
    for key, value in saved.items():
        r.restore(key, 0, value)
    with serve(settings) as client:  # a new process-level app: the hit comes from Redis
        again = post_scene(client, data, category).json()
    assert again["cached"] is True and again["products"] == first["products"]
    with serve(settings.model_copy(update={"cache_size": 0})) as client:  # Redis alone
        assert post_scene(client, data, category).json()["cached"] is True


def _eventually(check: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Whether ``check()`` holds within ``timeout_s`` (writes to Redis go behind answers)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    """A private redis-server (never the shared one on 6379)."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=0.2).ping():
                return proc
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_stopped_mid_test_is_bypassed_then_reconnected(stl_dir: Path) -> None:
    port = free_port()
    server = _start_redis(port)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        # A reply timeout no busy machine reaches: this test is about an outage, not slowness.
        settings = settings_for(
            tiny_artifacts(stl_dir), stl_dir, redis_url=url, redis_retry_s=0.3, redis_timeout_s=5
        )
        clock, metrics = Clock(), ServiceMetrics()
        with serve(settings, cache=tiered(url, settings, clock, metrics)) as client:
            category = client.get("/categories").json()["categories"][0]["name"]
            assert post_scene(client, scene(stl_dir, 21), category).json()["cached"] is False
            assert post_scene(client, scene(stl_dir, 21), category).json()["cached"] is True

            _stop(server)
            for n in (22, 23):
                r = post_scene(client, scene(stl_dir, n), category)
                assert r.status_code == 200 and r.json()["cached"] is False
            assert metrics.value("ctl_cache_errors_total", backend="redis") >= 1

            server = _start_redis(port)  # empty: the new server knows no key yet
            clock.now += settings.redis_retry_s  # past the longest pause
            assert post_scene(client, scene(stl_dir, 24), category).status_code == 200
            assert _eventually(lambda: bool(redis.Redis(port=port).keys("*"))), (
                "the service did not reconnect to Redis"
            )
            assert post_scene(client, scene(stl_dir, 24), category).json()["cached"] is True
    finally:
        _stop(server)


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_a_scene_stored_while_redis_is_down_says_so_and_reaches_redis_when_posted_again(
    stl_dir: Path,
) -> None:
    """Two replicas on one private Redis. A scene POSTed to one while Redis is down is only
    its own (the answer says so); posted again once Redis answers, it reaches Redis, the other
    replica answers for it, and its expiry starts anew (the answer's ``expires_in`` is true)."""
    port = free_port()
    server = _start_redis(port)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        artifacts = tiny_artifacts(stl_dir)
        # A reply timeout no busy machine reaches: this test is about an outage, not slowness.
        same = {"redis_url": url, "cache_ttl_s": 100, "redis_timeout_s": 5}
        one = settings_for(artifacts, stl_dir, redis_retry_s=0.3, **same)
        other = settings_for(artifacts, stl_dir, cache_size=0, **same)
        photo = {"image": ("s.jpg", scene(stl_dir, 31), "image/jpeg")}
        clock = Clock()
        with serve(one, cache=tiered(url, one, clock, ServiceMetrics())) as a, serve(other) as b:
            category = a.get("/categories").json()["categories"][0]["name"]
            _stop(server)
            first = a.post("/scenes", files=photo)
            assert first.status_code == 201 and first.json()["shared"] is False, first.text
            path = f"/scenes/{first.json()['scene_id']}/complete-the-look"
            assert a.get(path, params={"category": category}).status_code == 200

            server = _start_redis(port)  # empty: it never saw the scene
            clock.now += one.redis_retry_s  # past the longest pause
            again = a.post("/scenes", files=photo)
            assert again.status_code == 200 and again.json()["shared"] is True, again.text
            answer = b.get(path, params={"category": category})
            assert answer.status_code == 200, answer.text

            direct = redis.Redis(port=port, socket_timeout=10)
            (key,) = direct.keys("*emb:*")
            direct.expire(key, 5)  # as if 95 of its 100 seconds had passed
            third = a.post("/scenes", files=photo)
            assert third.status_code == 200 and third.json()["expires_in"] == 100
            assert direct.ttl(key) > 90, direct.ttl(key)
    finally:
        _stop(server)


def test_hanging_redis_costs_one_timeout_then_is_skipped(stl_dir: Path) -> None:
    """A server that accepts connections and never answers (a 'slow' Redis)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    settings = settings_for(
        tiny_artifacts(stl_dir),
        stl_dir,
        redis_url=f"redis://127.0.0.1:{port}/0",
        redis_timeout_s=0.05,
        redis_retry_s=60,
        redis_retry_min_s=60,
    )
    try:
        with serve(settings) as client:
            category = client.get("/categories").json()["categories"][0]["name"]
            started = time.perf_counter()
            for n in range(25, 29):
                assert post_scene(client, scene(stl_dir, n), category).status_code == 200
            elapsed = time.perf_counter() - started
            text = client.get("/metrics").text
        assert elapsed < 5, f"four requests took {elapsed:.1f}s behind a hanging Redis"
        line = next(ln for ln in text.splitlines() if ln.startswith("ctl_cache_errors_total{"))
        assert float(line.split()[-1]) == 1, "Redis was retried within its retry interval"
    finally:
        stop.set()
        thread.join()
        for s in accepted:
            s.close()
        listener.close()


def test_one_failure_pauses_redis_briefly_and_failed_retries_back_off() -> None:
    """Not 5 s off for one slow or failed call: 0.3 s, then 0.6 s, ... up to retry_s."""

    async def run() -> None:
        metrics = ServiceMetrics()
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every call fails
        clock = Clock()
        cache = RedisCache(url, _settings(0.05, retry_min_s=0.3), metrics, clock)
        assert await get(cache, "a") is None
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 1
        clock.now += 0.29  # the first pause: not retried yet
        assert await get(cache, "a") is None
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 1
        clock.now += 0.16
        assert await get(cache, "a") is None
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 2, (
            "still off after one failure"
        )
        clock.now += 0.35  # the pause doubled to 0.6 s: not retried yet
        assert await get(cache, "a") is None
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 2
        clock.now += 0.45
        assert await get(cache, "a") is None
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 3
        await cache.close()

    asyncio.run(run())


def test_the_connect_timeout_is_its_own_setting() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", cache_size=0)
    cache = make_cache(settings, ServiceMetrics())
    assert isinstance(cache, RedisCache)
    kwargs = cache._redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == settings.redis_timeout_s == 0.05
    assert kwargs["socket_connect_timeout"] == settings.redis_connect_timeout_s == 1.0


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_stale_pooled_connections_after_a_restart_are_retried_not_failures() -> None:
    port = free_port()
    server = _start_redis(port)
    metrics = ServiceMetrics()

    async def run() -> None:
        nonlocal server
        cache = RedisCache(f"redis://127.0.0.1:{port}/0", _settings(1.0), metrics)
        await asyncio.gather(*(get(cache, f"k{n}") for n in range(16)))  # 16 pooled connections
        _stop(server)
        server = _start_redis(port)  # every pooled connection is now closed by the server
        assert await asyncio.gather(*(get(cache, f"k{n}") for n in range(16))) == [None] * 16
        assert metrics.value("ctl_cache_errors_total", backend="redis") == 0, (
            "a stale connection counted as a failure"
        )
        await cache.set("x", b"1")
        await cache.flush()
        assert await get(cache, "x") == b"1"
        await cache.close()

    try:
        asyncio.run(run())
    finally:
        _stop(server)


RESTART_RECOVERY_BOUND_S = 3.0
"""From the restarted Redis answering to the service writing to it again (default back-off:
0.1 s doubling, so an outage of a second is retried within ~1.6 s of its end)."""


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_redis_restarted_under_load_fails_no_request_and_is_back_in_use_soon(
    stl_dir: Path,
) -> None:
    import httpx

    port = free_port()
    server = _start_redis(port)
    settings = settings_for(
        tiny_artifacts(stl_dir), stl_dir, redis_url=f"redis://127.0.0.1:{port}/0", cache_size=0
    )
    scenes = [scene(stl_dir, n) for n in range(30, 70)]
    statuses: list[int] = []
    stop = threading.Event()
    try:
        with running(create_app(settings)) as base:
            categories = httpx.get(f"{base}/categories").json()["categories"]
            names = [c["name"] for c in categories]

            def client(worker: int) -> None:
                with httpx.Client(base_url=base, timeout=30) as http:
                    n = worker
                    while not stop.is_set():
                        r = http.post(
                            "/complete-the-look",
                            files={"image": ("s.jpg", scenes[n % len(scenes)], "image/jpeg")},
                            data={"category": names[n % len(names)], "k": "3"},
                        )
                        statuses.append(r.status_code)
                        n += 7

            workers = [threading.Thread(target=client, args=(w,)) for w in range(8)]
            for w in workers:
                w.start()
            try:
                time.sleep(1.5)
                served_before = len(statuses)
                _stop(server)
                server = _start_redis(port)
                up = time.monotonic()
                fresh = redis.Redis(port=port)
                assert _eventually(lambda: fresh.dbsize() > 0, timeout_s=10), "never back"
                recovery = time.monotonic() - up
                time.sleep(1.0)
            finally:
                stop.set()
                for w in workers:
                    w.join()
        logging.getLogger(__name__).info(
            "Redis restart under load: %d requests (%d before the restart), %d failed, "
            "cache back in use %.2f s after Redis answered",
            len(statuses),
            served_before,
            sum(s != 200 for s in statuses),
            recovery,
        )
        assert served_before > 0 and len(statuses) > served_before
        assert [s for s in statuses if s != 200] == []
        assert recovery < RESTART_RECOVERY_BOUND_S, f"back in use after {recovery:.2f} s"
    finally:
        _stop(server)
