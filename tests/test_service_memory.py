"""Memory under the probe's load: four concurrent batches of 32 x 10 MB uploads.

The service runs as ``ctl serve`` does (uvicorn, in its own process, on a spare loopback port),
so its resident memory can be read from /proc while the batches are in flight. Before the
upload budget, one such batch took the process from 0.74 to 1.18 GB and four at once to 2.05 GB:
every file of every batch was read into memory at the same time.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image
from service_support import free_port, scene, tiny_artifacts

log = logging.getLogger(__name__)

FILE_BYTES = 10_000_000
FILES = 32
CLIENTS = 4
BUDGET = 64 * 1024 * 1024
RSS_GROWTH_BOUND = 256 * 1024 * 1024
"""Resident growth allowed under the load: the 64 MiB budget, the files of the batches' windows
being parsed, decoded images and allocator slack. Measured on 2 cores: +1231 MiB before the
budget (190 -> 1421 MiB), +101 MiB with it (144 -> 245 MiB)."""

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")


def rss_bytes(pid: int) -> int:
    """The resident set of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def server(stl_dir: Path) -> Iterator[tuple[int, int]]:
    """(pid, port) of the service under uvicorn in a subprocess, ready."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CTL_ARTIFACTS_DIR": str(tiny_artifacts(stl_dir)),
        "CTL_DATA_DIR": str(stl_dir),
        "CTL_UPLOAD_BUDGET_BYTES": str(BUDGET),
        "CTL_UPLOAD_WAIT_S": "60",
        "CTL_SAMPLES_COUNT": "0",
    }
    env.pop("CTL_REDIS_URL", None)
    code = "import sys; from service.main import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port), "--log-level", "warning"],
        env=env,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "the service exited"
            assert time.monotonic() < deadline, "the service did not get ready"
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield proc.pid, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _photo(stl_dir: Path) -> bytes:
    image = Image.open(io.BytesIO(scene(stl_dir, 5))).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def batch_body(photo: bytes, tag: int, boundary: str, files: int) -> Iterator[bytes]:
    """A batch of ``FILES`` distinct 10 MB JPEGs (a real photo, then padding a JPEG decoder
    ignores), streamed: the test process never holds a whole file."""
    pad = b"\0" * (1024 * 1024)
    for n in range(files):
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{tag}-{n}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        yield photo
        mark = f"{tag}-{n}".encode()  # distinct bytes: distinct scenes, nothing cached
        yield mark
        left = FILE_BYTES - len(photo) - len(mark)
        while left > 0:
            yield pad[: min(left, len(pad))]
            left -= len(pad)
        yield b"\r\n"
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n2\r\n'.encode()
    yield f"--{boundary}--\r\n".encode()


def post_batch(port: int, photo: bytes, tag: int, files: int = FILES) -> tuple[int, bytes]:
    boundary = f"probe{tag}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(
        "POST",
        "/batch/complete-the-look",
        body=batch_body(photo, tag, boundary, files),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    return response.status, response.read()


def measure(pid: int, port: int, photo: bytes) -> tuple[int, int, list[tuple[int, bytes]]]:
    """(RSS before, peak RSS during, answers) of ``CLIENTS`` concurrent batches."""
    post_batch(port, photo, 99, files=4)  # a warm-up first: lazy imports, pools, arenas
    before = rss_bytes(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda t: post_batch(port, photo, t), range(CLIENTS)))
    finally:
        done.set()
        sampler.join()
    return before, peak, answers


def test_four_concurrent_batches_of_32_x_10_mb_stay_within_the_memory_bound(
    server: tuple[int, int], stl_dir: Path
) -> None:
    pid, port = server
    before, peak, answers = measure(pid, port, _photo(stl_dir))
    log.info("RSS before %.0f MiB, peak %.0f MiB", before / 2**20, peak / 2**20)
    for status, body in answers:
        assert status == 200, body[:300]
        items = json.loads(body)["items"]
        assert len(items) == FILES and all("results" in item for item in items), body[:300]
    assert peak - before < RSS_GROWTH_BOUND, (
        f"RSS grew {(peak - before) / 2**20:.0f} MiB (from {before / 2**20:.0f} MiB) under "
        f"{CLIENTS} concurrent batches of {FILES} x {FILE_BYTES / 1e6:.0f} MB"
    )
