"""Service benchmark: uvicorn on loopback, load at 1, 8 and 32 clients, misses and hits.

Cache misses use distinct real scene photos (each sent once); cache hits repeat one warmed
photo. The bare encoder is measured in the same run on the same photos: per-image time at
batch 1 (for the overhead ratio) and images/s at its best batch size (for the throughput ratio).

    python bench/bench_service.py --artifacts artifacts --scenes ../shared/stl-fashion/images/scenes
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from model.runtime import OnnxEncoder  # noqa: E402
from service.config import Settings  # noqa: E402

log = logging.getLogger("bench_service")


@dataclass
class Row:
    """One load level."""

    mode: str
    clients: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    server_mean_ms: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(artifacts: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``ctl serve`` in a subprocess; returns once /readyz answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "cli.py"),
            "serve",
            "--artifacts",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.terminate()
    raise SystemExit("the server did not become ready in 120 s")


async def load(
    url: str, payloads: list[bytes], clients: int, category: str, k: int
) -> tuple[list[float], int, float]:
    """Send every payload once, ``clients`` at a time; (latencies s, errors, wall s)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for p in payloads:
        queue.put_nowait(p)
    latencies: list[float] = []
    errors = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while not queue.empty():
            data = queue.get_nowait()
            start = time.perf_counter()
            try:
                r = await http.post(
                    url,
                    files={"image": ("scene.jpg", data, "image/jpeg")},
                    data={"category": category, "k": str(k)},
                )
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return latencies, errors, wall


def server_time(base: str) -> tuple[float, float]:
    """(sum of seconds, count) of successful /complete-the-look requests, from /metrics."""
    series = 'endpoint="/complete-the-look",method="POST",status="200"'
    values = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"ctl_http_request_duration_seconds_{part}{{{series}}}"):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def measure(
    base: str, mode: str, payloads: list[bytes], clients: int, category: str, k: int
) -> Row:
    """One load level: client-side latencies and the server's own mean time."""
    sum0, n0 = server_time(base)
    latencies, errors, wall = asyncio.run(
        load(f"{base}/complete-the-look", payloads, clients, category, k)
    )
    sum1, n1 = server_time(base)
    return Row(
        mode,
        clients,
        len(latencies),
        errors,
        len(latencies) / wall,
        1000 * statistics.median(latencies),
        1000 * _percentile(latencies, 0.99),
        1000 * statistics.fmean(latencies),
        1000 * (sum1 - sum0) / max(n1 - n0, 1),
    )


def bare_encoder(
    artifacts: Path, photos: list[bytes], batch_sizes: list[int]
) -> tuple[list[float], dict[int, float]]:
    """Per-image seconds at batch 1 on ``photos`` and images/s for each batch size."""
    encoder = OnnxEncoder.from_artifacts(artifacts, device="auto")
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    encoder.embed_scenes(images[:2])  # warm-up
    per_image = []
    for im in images:
        start = time.perf_counter()
        encoder.embed_scenes([im])
        per_image.append(time.perf_counter() - start)
    throughput = {}
    for bs in batch_sizes:
        n = max(bs, min(len(images), 4 * bs)) // bs * bs
        batch_images = [images[i % len(images)] for i in range(n)]
        start = time.perf_counter()
        for i in range(0, n, bs):
            encoder.embed_scenes(batch_images[i : i + bs])
        throughput[bs] = n / (time.perf_counter() - start)
    return per_image, throughput


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=settings.artifacts_dir)
    parser.add_argument("--scenes", type=Path, default=settings.data_dir / "images" / "scenes")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--miss-requests", type=int, default=64, help="per level (x2 at 32)")
    parser.add_argument("--hit-requests", type=int, default=400)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--category", default=None, help="default: the first served category")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    levels = [int(c) for c in args.clients.split(",")]
    sizes = [args.miss_requests * (2 if c >= 32 else 1) for c in levels]
    files = sorted(args.scenes.glob("*.jpg"))
    if len(files) < sum(sizes):
        raise SystemExit(f"need {sum(sizes)} distinct scenes in {args.scenes}, found {len(files)}")
    photos = [f.read_bytes() for f in files[: sum(sizes)]]

    load_before = os.getloadavg()[0]
    port = _free_port()
    server = start_server(args.artifacts, port, {})
    rows: list[Row] = []
    try:
        # The bare encoder first, in this process while the server idles, so both are measured
        # under the same machine load (the CPU is shared).
        per_image, throughput = bare_encoder(
            args.artifacts, photos[: sizes[0]], [int(b) for b in args.batch_sizes.split(",")]
        )
        base = f"http://127.0.0.1:{port}"
        category = args.category or httpx.get(f"{base}/categories").json()["categories"][0]["name"]
        log.info("category %r, levels %s, miss requests %s", category, levels, sizes)
        measure(base, "warm-up", [photos[-1]], 1, category, args.k)
        offset = 0
        for clients, n in zip(levels, sizes, strict=True):
            batch = photos[offset : offset + n]
            offset += n
            rows.append(measure(base, "miss", batch, clients, category, args.k))
            log.info("%s", rows[-1])
        for clients in levels:
            hits = [photos[0]] * args.hit_requests
            rows.append(measure(base, "hit", hits, clients, category, args.k))
            log.info("%s", rows[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)

    best_bs = max(throughput, key=lambda b: throughput[b])
    miss1 = next(r for r in rows if r.mode == "miss" and r.clients == 1)
    overhead = miss1.mean_ms / (1000 * statistics.fmean(per_image))
    lines = [
        "| mode | clients | requests | errors | req/s | p50 ms | p99 ms | server mean ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.mode} | {r.clients} | {r.requests} | {r.errors} | {r.rps:.1f} | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.server_mean_ms:.1f} |"
            for r in rows
        ),
        "",
        f"load average (1 min) at the start {load_before:.1f}, at the end {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs",
        f"bare encoder, batch 1: {1000 * statistics.fmean(per_image):.1f} ms/image "
        f"(same {len(per_image)} photos as the 1-client misses)",
        "bare encoder images/s by batch size: "
        + ", ".join(f"{b}: {v:.1f}" for b, v in throughput.items()),
        f"best batch size {best_bs}: {throughput[best_bs]:.1f} images/s",
        f"overhead ratio (1-client miss mean latency / bare batch-1 time): {overhead:.2f}",
        *(
            f"miss throughput at {r.clients} clients / bare best: {r.rps / throughput[best_bs]:.2f}"
            for r in rows
            if r.mode == "miss" and r.clients >= 8
        ),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "bare_ms_per_image_batch1": 1000 * statistics.fmean(per_image),
                    "bare_images_per_s": throughput,
                    "best_batch": best_bs,
                    "overhead_ratio": overhead,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
