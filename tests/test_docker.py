"""`docker compose up` for real, with docker/compose.local.yml: images built offline from Debian's
packages and the locked wheels, artifacts and index from real pairs, Redis, the API, a real scene;
then with docker/compose.replicas.yml: three API replicas behind Debian's HAProxy on the same
volume, requests spread over them, a catalog update through the balancer followed by every
replica, and no failed request under load during updates.

The artifacts come from the job image (`build-artifacts`, with torch) when CTL_DOCKER_JOB=1;
otherwise the project's own `ctl quickstart` builds them on the host from the same pairs and they
are copied into the compose volume, and only the API (no torch) and Redis images are built: the
job image's torch layers cost many minutes (README, Docker). Everything the test creates
(containers, volumes, images, the data subset) is removed at the end; images that existed before
(the local base images of an earlier run, say) are kept. CTL_DOCKER_KEEP=1 keeps the images.
Both tests share one compose project: the images and the artifacts volume are made once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import pytest
import redis

import cli
from index.prior import PopularityPrior
from tests.conftest import IN_CI, REPO
from tests.test_replicas import STALENESS_BOUND_S, _eventually
from training.stl import STLData

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

N_PAIRS = 200
LOCAL = "docker/compose.local.yml"
REPLICAS = "docker/compose.replicas.yml"
N_REPLICAS = 3
ADMIN_TOKEN = "docker-test-admin-token"
USE_JOB = os.environ.get("CTL_DOCKER_JOB", "") == "1"
KEEP_IMAGES = os.environ.get("CTL_DOCKER_KEEP", "") == "1"


def _compose_command() -> list[str] | None:
    """`docker compose` (the v2 plugin) where it answers, else Debian's `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _engine_or_skip() -> list[str]:
    """The compose command, once a docker engine answers; skip without one (fail in CI)."""
    reason = ""
    if shutil.which("docker") is None:
        reason = "no docker CLI on PATH"
    elif subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        reason = "no docker engine answers (`docker info` fails)"
    compose = _compose_command() if not reason else None
    if not reason and compose is None:
        reason = "neither `docker compose` nor `docker-compose` is installed"
    if reason:
        if IN_CI:
            pytest.fail(f"{reason}: .ci/run installs and starts the engine in CI")
        pytest.skip(reason)
    assert compose is not None
    return compose


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _images() -> set[str]:
    out = subprocess.run(
        ["docker", "images", "-aq", "--no-trunc"], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def _copy_subset(stl_dir: Path, out: Path, n_pairs: int) -> list[dict[str, object]]:
    """A data dir with the first ``n_pairs`` pairs that have both images, as real files (a
    container sees the mounted folder only, so symlinks to the shared data would dangle)."""
    data = STLData.load(stl_dir)
    pairs = data.pairs_with_images()[:n_pairs]
    for kind in ("scenes", "products"):
        (out / "images" / kind).mkdir(parents=True)
    rows: list[dict[str, object]] = [
        {"product": p.product, "scene": p.scene, "bbox": list(p.bbox)} for p in pairs
    ]
    (out / "fashion.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copyfile(stl_dir / "fashion-cat.json", out / "fashion-cat.json")
    for p in pairs:
        for kind, sig in (("scenes", p.scene), ("products", p.product)):
            target = out / "images" / kind / f"{sig}.jpg"
            if not target.exists():
                shutil.copyfile(stl_dir / "images" / kind / f"{sig}.jpg", target)
    # The containers run as uid 10001: every folder must be readable and traversable.
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return rows


@dataclass
class Stack:
    """One compose project on this engine, with its own ports and data."""

    compose: list[str]
    project: str
    data: Path
    api_port: int
    redis_port: int
    replica_ports: tuple[int, ...]
    files: tuple[str, ...] = ("docker-compose.yml", LOCAL)
    timings: dict[str, float] = field(default_factory=dict)
    prepared: list[bool] = field(default_factory=list)  # shared by with_replicas() copies

    def with_replicas(self) -> Stack:
        """The same project, images and volumes, with docker/compose.replicas.yml on top: the
        load balancer on ``api_port``, the replicas on ``replica_ports``."""
        return replace(self, files=(*self.files, REPLICAS))

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CTL_DATA": str(self.data),
            "CTL_ADMIN_TOKEN": ADMIN_TOKEN,
            "CTL_LOCAL_API_PORT": str(self.api_port),
            "CTL_LOCAL_REDIS_PORT": str(self.redis_port),
            **{f"CTL_LOCAL_API_{n}_PORT": str(p) for n, p in enumerate(self.replica_ports, 1)},
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def run(self, *args: str, timeout: float = 600) -> str:
        """A compose command on this project; its output is logged, a failure raises."""
        files = [arg for path in self.files for arg in ("-f", path)]
        cmd = [*self.compose, *files, "-p", self.project, *args]
        log.info("$ %s", " ".join(cmd))
        proc = subprocess.run(
            cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        log.info("%s%s", proc.stdout[-4000:], proc.stderr[-4000:])
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def container(self, service: str) -> str:
        cid = self.run("ps", "-q", service).strip()
        assert cid, f"no container for {service}"
        return cid

    def wait_healthy(self, service: str, timeout: float = 300) -> None:
        """Until docker reports the service's own healthcheck as healthy."""
        cid = self.container(service)
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if status == "healthy":
                return
            time.sleep(1)
        logs = subprocess.run(
            ["docker", "logs", "--tail", "60", cid], capture_output=True, text=True
        )
        pytest.fail(f"{service} is {status!r} after {timeout} s:\n{logs.stdout}{logs.stderr}")


@pytest.fixture(scope="module")
def stack(stl_dir: Path) -> Iterator[Stack]:
    compose = _engine_or_skip()
    before = _images()
    root = Path(tempfile.mkdtemp(prefix="ctl-docker-"))
    root.chmod(0o755)
    _copy_subset(stl_dir, root / "data", N_PAIRS)
    ports = [_free_port() for _ in range(2 + N_REPLICAS)]
    s = Stack(compose, f"ctltest{os.getpid()}", root / "data", ports[0], ports[1], tuple(ports[2:]))
    try:
        yield s
    finally:
        try:
            s.with_replicas().run("down", "--volumes", "--remove-orphans", timeout=300)
        finally:
            if not KEEP_IMAGES:
                created = _images() - before
                if created:
                    subprocess.run(["docker", "rmi", "-f", *created], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)
            log.info("docker test timings (s): %s", json.dumps(s.timings))


def _host_artifacts(stack: Stack, out: Path) -> None:
    """Artifacts and index from the same pairs with the project's own ctl, into the volume."""
    work = out.parent / "work"
    argv = ["quickstart", "--data", str(stack.data), "--work", str(work), "--artifacts", str(out)]
    assert cli.main([*argv, "--epochs", "3", "--no-serve"]) == 0
    for path in [out, *out.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    stack.run(
        "run", "--rm", "--no-deps", "-v", f"{out}:/src:ro", "--entrypoint", "cp", "api",
        "-r", "/src/.", "/artifacts/",
    )  # fmt: skip


def _prepare(stack: Stack) -> None:
    """Once per module: the local images and wheels, the API image (and the job's with
    CTL_DOCKER_JOB=1), and artifacts in the volume (from the host's ctl unless the job runs)."""
    if stack.prepared:
        return
    start = time.monotonic()
    subprocess.run(
        [str(REPO / "docker" / "build-local"), *(["--job"] if USE_JOB else [])],
        cwd=REPO,
        check=True,
        timeout=1800,
    )
    stack.timings["build_local"] = time.monotonic() - start

    start = time.monotonic()
    stack.run("build", *(["build-artifacts", "api"] if USE_JOB else ["api"]), timeout=2400)
    stack.timings["compose_build"] = time.monotonic() - start

    start = time.monotonic()
    if USE_JOB:
        stack.run("run", "--rm", "build-artifacts", timeout=1800)
    else:
        _host_artifacts(stack, stack.data.parent / "artifacts")
    stack.timings["artifacts"] = time.monotonic() - start
    stack.prepared.append(True)


def _post(stack: Stack, scene: Path, category: str) -> dict[str, object]:
    with scene.open("rb") as f:
        r = httpx.post(
            f"{stack.url}/complete-the-look",
            files={"image": (scene.name, f, "image/jpeg")},
            data={"category": category, "k": "5"},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_compose_up_serves_real_scenes_through_redis(stack: Stack, stl_dir: Path) -> None:
    _prepare(stack)
    start = time.monotonic()
    stack.run("up", "-d", "--no-deps", "redis", "api")
    stack.wait_healthy("redis")
    stack.wait_healthy("api")
    ready = httpx.get(f"{stack.url}/readyz", timeout=10).json()
    assert ready["cache"] == "redis", ready

    # A real scene and the category of a product paired with it.
    data = STLData.load(stack.data)
    pair = data.pairs_with_images()[0]
    category = data.categories[pair.product]
    scene = data.scene_path(pair.scene)
    first = _post(stack, scene, category)
    stack.timings["up_to_first_answer"] = time.monotonic() - start
    products = first["products"]
    assert isinstance(products, list) and 0 < len(products) <= 5
    assert [p["rank"] for p in products] == list(range(1, len(products) + 1))
    assert all(p["category"] == category for p in products)
    # Ranked as exported: d* less the popularity prior, read from the artifacts in the volume.
    volume = Path(tempfile.mkdtemp(prefix="ctl-docker-artifacts-"))
    for name in ("manifest.json", "popularity.json"):
        text = stack.run("exec", "-T", "api", "sh", "-c", f"cat /artifacts/{name} || true")
        (volume / name).write_text(text)
    prior = PopularityPrior.from_artifacts(volume)
    bonus = prior.bonus([str(p["id"]) for p in products]) if prior else [0.0] * len(products)
    adjusted = [p["d_star"] - float(b) for p, b in zip(products, bonus, strict=True)]
    assert adjusted == sorted(adjusted)
    assert first["cached"] is False
    assert first["index_version"] == ready["index_version"]

    # The same photo again: a cache hit, and the cache it was written to is the compose Redis.
    second = _post(stack, scene, category)
    assert second["cached"] is True and second["products"] == products
    far = redis.Redis(host="127.0.0.1", port=stack.redis_port, socket_timeout=5)
    assert far.dbsize() > 0, "nothing was written to the compose Redis"

    # A restarted API (empty in-process cache) serves the same index version from the volume,
    # and only Redis can answer the photo from cache now.
    api = stack.container("api")
    started = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}}", api], capture_output=True, text=True
    ).stdout
    subprocess.run(["docker", "restart", api], check=True, capture_output=True, timeout=120)
    time.sleep(2)  # the health status resets to "starting" once the container is back
    stack.wait_healthy("api")
    assert (
        subprocess.run(
            ["docker", "inspect", "-f", "{{.State.StartedAt}}", api], capture_output=True, text=True
        ).stdout
        != started
    )
    again = httpx.get(f"{stack.url}/readyz", timeout=10).json()
    assert again["index_version"] == ready["index_version"]
    assert again["model_version"] == ready["model_version"]
    third = _post(stack, scene, category)
    assert third["cached"] is True and third["products"] == products


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=10).status_code
    except httpx.HTTPError:
        return -1


def _admin_add(url: str, pid: str, category: str, photo: Path) -> str:
    """Adds a product through ``url``; the replica that took it (HAProxy's X-Served-By)."""
    r = httpx.post(
        f"{url}/admin/products",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        data={"product_id": pid, "category": category},
        files={"image": (photo.name, photo.read_bytes(), "image/jpeg")},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.headers["X-Served-By"]


def _admin_remove(url: str, pid: str) -> str:
    r = httpx.delete(
        f"{url}/admin/products/{pid}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    return r.headers["X-Served-By"]


def test_replicas_behind_haproxy_converge_without_failing_requests(
    stack: Stack, stl_dir: Path
) -> None:
    _prepare(stack)
    lb = stack.with_replicas()
    start = time.monotonic()
    lb.run("up", "-d", "--no-deps", "redis", "api", "api-2", "api-3", "lb")
    for service in ("redis", "api", "api-2", "api-3", "lb"):
        lb.wait_healthy(service)
    stack.timings["replicas_up_healthy"] = time.monotonic() - start
    replicas = [f"http://127.0.0.1:{p}" for p in lb.replica_ports]

    # Round robin: every replica answers its share of requests through the balancer.
    served = Counter(
        httpx.get(f"{lb.url}/categories", timeout=10).headers["X-Served-By"] for _ in range(30)
    )
    log.info("30 requests through HAProxy, by replica: %s", dict(served))
    assert sorted(served) == [f"api-{n}" for n in range(1, N_REPLICAS + 1)], served
    assert min(served.values()) >= 5, served

    # A product added through the balancer is seen through every replica within the bound;
    # so is its removal.
    data = STLData.load(stl_dir)
    in_catalog = {p.product for p in data.pairs_with_images()[:N_PAIRS]}
    new = [
        p for p in sorted(data.categories)
        if p not in in_catalog and data.product_path(p).is_file()
    ][:3]  # fmt: skip
    category = httpx.get(f"{lb.url}/categories", timeout=10).json()["categories"][0]["name"]
    photo = data.product_path(new[0])

    def seen_everywhere(pid: str, want: int, what: str) -> None:
        for url in replicas:
            took = _eventually(
                lambda u=url: _status(f"{u}/products/{pid}") == want, STALENESS_BOUND_S
            )
            assert took is not None, f"{url}: not {what} within {STALENESS_BOUND_S} s"
            log.info("%s through the balancer, seen through %s after %.3f s", what, url, took)
            stack.timings[f"{what}_seen_{url.rsplit(':', 1)[1]}"] = took

    log.info("added through %s", _admin_add(lb.url, "docker-new-1", category, photo))
    seen_everywhere("docker-new-1", 200, "added")
    log.info("removed through %s", _admin_remove(lb.url, "docker-new-1"))
    seen_everywhere("docker-new-1", 404, "removed")

    # A small load through the balancer while three catalog updates go through it: real scenes
    # ranked against the catalog (answers are cached per index version, so every update makes
    # the replicas encode and search again) and the catalog's categories.
    scenes = [data.scene_path(p.scene).read_bytes() for p in data.pairs_with_images()[:8]]
    stop = threading.Event()
    results: list[int] = []

    def load(n: int) -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set() and len(results) < 5000:
                try:
                    r = client.post(
                        f"{lb.url}/complete-the-look",
                        files={"image": ("s.jpg", scenes[n % len(scenes)], "image/jpeg")},
                        data={"category": category, "k": "5"},
                    )
                    results.append(r.status_code)
                    results.append(client.get(f"{lb.url}/categories").status_code)
                except httpx.HTTPError:
                    results.append(-1)
                n += 1

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(load, n) for n in range(4)]
        _admin_add(lb.url, "docker-load-0", category, data.product_path(new[1]))
        _admin_add(lb.url, "docker-load-1", category, data.product_path(new[2]))
        _admin_remove(lb.url, "docker-load-0")
        time.sleep(2.0)  # the replicas follow the last update under load
        stop.set()
        for w in workers:
            w.result()
    failed = [s for s in results if s != 200]
    log.info("load during 3 catalog updates: %d requests, %d failed", len(results), len(failed))
    stack.timings["load_requests"] = len(results)
    assert results and not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    for url in replicas:  # the last version, after the load: the updates' sum everywhere
        assert _status(f"{url}/products/docker-load-0") == 404, url
        assert _status(f"{url}/products/docker-load-1") == 200, url
    versions = {httpx.get(f"{u}/readyz", timeout=10).json()["index_version"] for u in replicas}
    assert len(versions) == 1, f"replicas serve different versions: {versions}"
