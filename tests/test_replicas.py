"""Several replicas agree on one catalog: three `ctl serve` processes on one artifacts folder and
one Redis (a private redis-server), catalog updates through one seen through the others, no
failed request under load during updates; and the polling path without Redis."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from service_support import (
    ADMIN_TOKEN,
    admin_headers,
    copy_artifacts,
    serve,
    settings_for,
)

from index.build import NewProduct, add_products
from index.store import IndexStore
from runtime.encoder import OnnxEncoder

REPO = Path(__file__).resolve().parents[1]
# The staleness this test holds the replicas to: an announcement wakes them at once, and loading
# a catalog version of the tiny model takes well under a second even on a busy 2-core machine.
STALENESS_BOUND_S = 5.0
log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _eventually(check: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``check()`` held, or None if it never did within ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


@pytest.fixture
def private_redis() -> Iterator[str]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        assert _eventually(lambda: _pings(port), 10.0) is not None, "redis-server did not start"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def replicas(stl_dir: Path, tmp_path: Path, private_redis: str) -> Iterator[list[str]]:
    """Base URLs of three `ctl serve` processes sharing one artifacts folder and one Redis."""
    artifacts = copy_artifacts(stl_dir, tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CTL_REDIS_URL": private_redis,
        "CTL_ADMIN_TOKEN": ADMIN_TOKEN,
        "CTL_DATA_DIR": str(stl_dir),
        "CTL_FOLLOW_INTERVAL_S": "1.0",
        "CTL_ENCODER_LANES": "1",
        "CTL_INFERENCE_THREADS": "1",
    }
    procs, urls = [], []
    for n in range(3):
        port = _free_port()
        log_file = (tmp_path / f"replica-{n}.log").open("w")
        cmd = [sys.executable, str(REPO / "cli.py"), "serve", "--artifacts", str(artifacts),
               "--port", str(port)]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log_file, stderr=log_file))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for url, proc in zip(urls, procs, strict=True):
            up = _eventually(lambda u=url: _ready(u), 120.0)
            assert up is not None, f"{url} never got ready (exit {proc.poll()})"
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _status(url: str, path: str) -> int:
    return httpx.get(url + path, timeout=10.0).status_code


def _product_photo(stl_dir: Path, n: int) -> bytes:
    return sorted((stl_dir / "images" / "products").glob("*.jpg"))[-1 - n].read_bytes()


def _add(url: str, pid: str, category: str, photo: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/admin/products",
        headers=admin_headers(),
        data={"product_id": pid, "category": category},
        files={"image": ("p.jpg", photo, "image/jpeg")},
        timeout=60.0,
    )


@pytest.mark.redis
def test_replicas_converge_on_catalog_updates_without_failing_requests(
    replicas: list[str], stl_dir: Path
) -> None:
    a, b, c = replicas
    category = httpx.get(f"{a}/categories").json()["categories"][0]["name"]

    def seen_through(others: tuple[str, str], want: int, what: str) -> None:
        for other in others:
            took = _eventually(
                lambda o=other: _status(o, "/products/replica-new-1") == want, STALENESS_BOUND_S
            )
            assert took is not None, f"{other}: not {what} within {STALENESS_BOUND_S} s"
            log.info("%s through one replica, seen through %s after %.3f s", what, other, took)

    r = _add(a, "replica-new-1", category, _product_photo(stl_dir, 0))
    assert r.status_code == 200, r.text
    seen_through((b, c), 200, "added")
    r = httpx.delete(f"{b}/admin/products/replica-new-1", headers=admin_headers(), timeout=60)
    assert r.status_code == 200, r.text
    seen_through((a, c), 404, "removed")

    # Two replicas add at once: the store's lock serialises them, and both products land.
    with ThreadPoolExecutor(2) as pool:
        adds = list(
            pool.map(
                lambda args: _add(*args),
                [(a, "replica-x", category, _product_photo(stl_dir, 1)),
                 (c, "replica-y", category, _product_photo(stl_dir, 2))],
            )
        )  # fmt: skip
    assert [r.status_code for r in adds] == [200, 200], [r.text for r in adds]
    for url in replicas:
        for pid in ("replica-x", "replica-y"):
            assert _eventually(lambda u=url, p=pid: _status(u, f"/products/{p}") == 200, 5.0)

    # A bounded load across all three while five catalog updates go through them in turn.
    existing = httpx.get(f"{a}/categories").json()["categories"][0]["name"]
    stop = threading.Event()
    results: list[int] = []

    def load(n: int) -> None:
        while not stop.is_set() and len(results) < 5000:
            url = replicas[(n + len(results)) % 3]
            try:
                r = httpx.get(f"{url}/categories", timeout=30.0)
                ok = r.status_code == 200 and r.json()["categories"][0]["name"] == existing
                results.append(200 if ok else r.status_code)
                r = httpx.get(f"{url}/products/replica-x/similar?k=3", timeout=30.0)
                results.append(r.status_code)
            except httpx.HTTPError:
                results.append(-1)

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(load, n) for n in range(4)]
        for n in range(5):
            via = replicas[n % 3]
            pid = f"replica-load-{n}"
            if n % 2 == 0:
                assert _add(via, pid, category, _product_photo(stl_dir, 3 + n)).status_code == 200
            else:
                r = httpx.delete(
                    f"{via}/admin/products/replica-load-{n - 1}",
                    headers=admin_headers(),
                    timeout=60,
                )
                assert r.status_code == 200, r.text
        time.sleep(1.0)
        stop.set()
        for w in workers:
            w.result()
    failed = [s for s in results if s != 200]
    log.info("load during 5 catalog updates: %d requests, %d failed", len(results), len(failed))
    assert results and not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    versions = {httpx.get(f"{u}/readyz").json()["index_version"] for u in replicas}
    assert _eventually(
        lambda: len({httpx.get(f"{u}/readyz").json()["index_version"] for u in replicas}) == 1,
        STALENESS_BOUND_S,
    ), f"replicas serve different versions: {versions}"


def test_without_redis_a_version_published_by_ctl_is_followed(
    stl_dir: Path, tmp_path: Path
) -> None:
    artifacts = copy_artifacts(stl_dir, tmp_path)
    settings = settings_for(artifacts, stl_dir, follow_interval_s=0.2)
    with serve(settings) as client:
        before = client.get("/readyz").json()["index_version"]
        category = client.get("/categories").json()["categories"][0]["name"]
        store = IndexStore.for_artifacts(artifacts)
        encoder = OnnxEncoder.from_artifacts(artifacts, device="cpu")
        photo = _product_photo(stl_dir, 0)
        add_products(store, encoder, [NewProduct("published-by-ctl", category, photo)])
        published = store.current()
        assert published != before
        took = _eventually(lambda: client.get("/readyz").json()["index_version"] == published, 5.0)
        assert took is not None, "the service never followed the new version"
        assert client.get("/products/published-by-ctl").status_code == 200


def _recommend(url: str, photo: bytes, category: str) -> list[str]:
    r = httpx.post(
        f"{url}/complete-the-look",
        files={"image": ("scene.jpg", photo, "image/jpeg")},
        data={"category": category, "k": "3"},
        timeout=60.0,
    )
    assert r.status_code == 200, r.text
    return [p["id"] for p in r.json()["products"]]


@pytest.mark.redis
def test_a_stock_flip_through_one_replica_filters_the_answers_of_the_others(
    replicas: list[str], stl_dir: Path
) -> None:
    a, b, c = replicas
    category = httpx.get(f"{a}/categories").json()["categories"][0]["name"]
    photo = sorted((stl_dir / "images" / "scenes").glob("*.jpg"))[0].read_bytes()
    before = {url: _recommend(url, photo, category) for url in replicas}
    assert len({tuple(v) for v in before.values()}) == 1  # and each one's cache now holds it
    out = before[a][0]
    version = httpx.get(f"{a}/readyz").json()["index_version"]
    r = httpx.patch(
        f"{a}/admin/products/{out}", json={"in_stock": False}, headers=admin_headers(), timeout=30
    )
    assert r.status_code == 200, r.text
    assert out not in _recommend(a, photo, category)
    for other in (b, c):
        took = _eventually(
            lambda o=other: out not in _recommend(o, photo, category), STALENESS_BOUND_S
        )
        assert took is not None, f"{other} still recommends {out} after {STALENESS_BOUND_S} s"
        log.info("stock flip through one replica, filtered by %s after %.3f s", other, took)
        assert httpx.get(f"{other}/products/{out}").json()["in_stock"] is False
        assert _recommend(other, photo, category) == _recommend(a, photo, category)
    # No index version was made: the flip touched no FAISS file.
    assert {httpx.get(f"{u}/readyz").json()["index_version"] for u in replicas} == {version}
