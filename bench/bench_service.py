"""Service benchmark: uvicorn on loopback, load at 1, 8 and 32 clients, misses and hits.

Cache misses use distinct real scene photos (each sent once); cache hits repeat one warmed
photo, as ``POST /complete-the-look`` (the one-shot call, upload included) and as ``GET
/scenes/{id}/complete-the-look`` (a question about a stored scene, no upload). Each figure is
compared with a baseline measured in the same run, because the CPU is shared and its speed
varies from machine to machine:

- The bare encoder (the same decoding and ONNX files, in this process, no service around it).
  At 1 client each request alternates with a bare batch-1 call on the same photo (the overhead
  ratio); before each concurrent level, a sweep of batch sizes on that level's photos gives the
  bare images/s at the best size (the throughput ratio), with one call at a time and, when the
  encoder has lanes, with that many overlapping calls. Every ratio is printed twice: with
  decoding the photos charged to the service (the bare encoder starts from decoded pixels) and
  charged to the encoder (it starts from the same JPEG bytes as the service).
- The HTTP layer alone (``floor_app``: uvicorn as ``ctl serve`` runs it, an app that only reads
  the body and answers as many bytes as the service): its latency at each level, for the same
  POST and GET requests, is what no service on this machine can beat. Targets: GET p50 within
  3x the floor's, POST hit p50 within 4x, both under 1 ms at 1 client.
- FastAPI alone (``floor_app`` with ``FLOOR_APP=fastapi``, served the same way): the hit routes'
  own signatures and a fixed answer, so the ratio to it is the service's own share of a hit.

- Today's path (``--today-artifacts``, the fp32 export): full decoding and that encoder, in this
  process, as the service ran before reduced-size decoding and int8. At 1 client it alternates
  with the bare encoder and the requests on the same photos; before each concurrent level, its
  best images/s. Targets: STL photos' miss p50 at most 0.65x of it (from int8 alone: they are
  400 px wide, under the reduced scale); phone photos' at most 0.35x, and their throughput at
  32 clients at least 2.5x.

Two photo sets: the STL scene photos (each sent once), and phone photos made from them here
(upscaled to 12 MP and re-encoded as quality-90 JPEG, never stored), which are what a shopper
uploads. Hits, GETs and the floors use the STL photos.

Each level also reports the server process's CPU time per request: with one event loop, the
hit rate cannot pass 1 / that, so at 32 clients the hit p50 is about 32 times it.

    python bench/bench_service.py --artifacts artifacts --today-artifacts artifacts-fp32 \
        --scenes ../shared/stl-fashion/images/scenes
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from runtime.encoder import OnnxEncoder  # noqa: E402
from service.config import Settings  # noqa: E402
from service.images import Upload, decode_upload  # noqa: E402
from service.serving import encoder_lanes  # noqa: E402

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
    server_cpu_ms: float  # the server process's CPU time (all threads) per request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _started(proc: subprocess.Popen[bytes], port: int) -> subprocess.Popen[bytes]:
    """``proc`` once http://127.0.0.1:``port``/readyz answers 200 (at most 120 s)."""
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


def start_server(artifacts: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``ctl serve`` in a subprocess; returns once /readyz answers."""
    command = [sys.executable, str(REPO / "cli.py"), "serve", "--artifacts", str(artifacts)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return _started(subprocess.Popen(command, cwd=REPO, env={**os.environ, **env}), port)


def start_floor(port: int, body_bytes: int, app: str) -> subprocess.Popen[bytes]:
    """``floor_app`` (``app``: http or fastapi) under uvicorn, with the settings ``ctl serve``
    passes to uvicorn."""
    command = [sys.executable, "-m", "uvicorn", "floor_app:app", "--app-dir", str(REPO / "bench")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    command += ["--no-access-log", "--no-proxy-headers", "--no-server-header"]
    env = {**os.environ, "FLOOR_BODY_BYTES": str(body_bytes), "FLOOR_APP": app}
    return _started(subprocess.Popen(command, cwd=REPO, env=env), port)


def get_request(port: int, scene_id: str, category: str, k: int) -> bytes:
    """The complete HTTP/1.1 request for one question about a stored scene."""
    query = httpx.QueryParams({"category": category, "k": k})
    return (
        f"GET /scenes/{scene_id}/complete-the-look?{query} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n\r\n"
    ).encode()


def multipart_request(port: int, photo: bytes, category: str, k: int) -> bytes:
    """The complete HTTP/1.1 request for one photo, built before the clock starts."""
    boundary = "ctlbench" + hashlib.sha1(photo).hexdigest()[:16]
    fields = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in (("category", category), ("k", str(k)))
    ]
    body = (
        "".join(fields).encode()
        + f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="scene.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /complete-the-look HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a keep-alive connection and read the whole response; its status."""
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    lengths = [int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length:")]
    if not lengths:
        raise ValueError("response without Content-Length")
    length = lengths[0]
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def load(port: int, requests: list[bytes], clients: int) -> tuple[list[float], int, float]:
    """Send every prebuilt request once, ``clients`` connections at a time; (latencies s,
    errors, wall s). A minimal HTTP/1.1 client, so the load generator, which shares the CPU
    with the server, costs little."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                start = time.perf_counter()
                try:
                    ok = await _exchange(reader, writer, request) == 200
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append(time.perf_counter() - start)
                errors += not ok
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors, time.perf_counter() - start


ENDPOINTS = {
    "POST": 'endpoint="/complete-the-look",method="POST",status="200"',
    "GET": 'endpoint="/scenes/{scene_id}/complete-the-look",method="GET",status="200"',
}


def server_time(base: str, method: str) -> tuple[float, float]:
    """(sum of seconds, count) of successful requests of the benchmarked route, from /metrics."""
    series = ENDPOINTS[method]
    values = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        for part in ("sum", "count"):
            if line.startswith(f"ctl_http_request_duration_seconds_{part}{{{series}}}"):
                values[part] = float(line.rsplit(" ", 1)[1])
    return values.get("sum", 0.0), values.get("count", 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (NaN where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def level(
    port: int, pid: int, mode: str, clients: int, run: Callable[[], tuple[list[float], int, float]]
) -> Row:
    """One load level: ``run()`` sends its requests and gives (latencies s, errors, wall s);
    the row adds the server's own mean time and its CPU time per request."""
    base = f"http://127.0.0.1:{port}"
    method = "GET" if mode.endswith("get") else "POST"
    sum0, n0 = server_time(base, method)
    cpu0 = cpu_seconds(pid)
    latencies, errors, wall = run()
    cpu1 = cpu_seconds(pid)
    sum1, n1 = server_time(base, method)
    return Row(
        mode,
        clients,
        len(latencies),
        errors,
        len(latencies) / wall,
        1000 * statistics.median(latencies),
        1000 * _percentile(latencies, 0.99),
        1000 * statistics.fmean(latencies),
        1000 * (sum1 - sum0) / (n1 - n0) if n1 > n0 else math.nan,  # the floor has no /metrics
        1000 * (cpu1 - cpu0) / len(latencies),
    )


def measure(port: int, pid: int, mode: str, requests: list[bytes], clients: int) -> Row:
    """Every request once, ``clients`` connections at a time."""
    return level(port, pid, mode, clients, lambda: asyncio.run(load(port, requests, clients)))


class BareEncoder:
    """The same encoder the server loads (lanes included), run directly in this process.

    ``full_decoding``: decode photos at full size, as the service did before reduced-size
    decoding (with the fp32 export, today's path: the baseline of the phone-photo targets).
    """

    def __init__(self, settings: Settings, full_decoding: bool = False) -> None:
        self.encoder = OnnxEncoder.from_artifacts(
            settings.artifacts_dir,
            device=settings.device,
            threads=settings.inference_threads,
            lanes=encoder_lanes(settings),
        )
        self.max_pixels = settings.max_image_pixels
        self.min_size = 0 if full_decoding else self.encoder.input_size

    def _decode(self, photo: bytes) -> Image.Image:
        """As the service decodes an upload (without hashing it: the service's own work)."""
        upload = Upload("scene.jpg", photo, sha256="")
        return decode_upload(upload, self.max_pixels, self.min_size)

    def seconds(self, photo: bytes) -> tuple[float, float]:
        """One photo at batch 1: (decoding it as the service does, encoding the pixels)."""
        start = time.perf_counter()
        image = self._decode(photo)
        decoded = time.perf_counter()
        self.encoder.embed_scenes([image])
        return decoded - start, time.perf_counter() - decoded

    def throughput(
        self, photos: list[bytes], batch_sizes: list[int], callers: int = 1, decoding: bool = True
    ) -> dict[int, float]:
        """Images/s at each batch size, with ``callers`` threads calling at once (more than
        one: overlapping calls, which the encoder runs on its lanes). With ``decoding``, each
        call decodes its photos as the service does; without, they are decoded beforehand."""
        decoded = [] if decoding else [self._decode(p) for p in photos]
        self.encoder.embed_scenes([self._decode(p) for p in photos[:2]])  # warm-up

        def call(batch: list[int]) -> None:
            if decoding:
                self.encoder.embed_scenes([self._decode(photos[i]) for i in batch])
            else:
                self.encoder.embed_scenes([decoded[i] for i in batch])

        out = {}
        for bs in batch_sizes:
            n = max(bs * callers, min(len(photos), 4 * bs * callers)) // bs * bs
            batches = [[(i + j) % len(photos) for j in range(bs)] for i in range(0, n, bs)]
            start = time.perf_counter()
            with ThreadPoolExecutor(callers) as pool:
                list(pool.map(call, batches))
            out[bs] = n / (time.perf_counter() - start)
        return out


def interleaved(
    port: int,
    pid: int,
    photos: list[bytes],
    requests: list[bytes],
    bare: BareEncoder,
    today: BareEncoder,
    mode: str = "miss",
) -> tuple[Row, list[float], list[float], list[float]]:
    """One client, alternating a bare encoder call, a call of today's path and a request for
    each photo, so that all three see the same machine load (the CPU is shared); the row, the
    bare encoder's seconds, the seconds of decoding the photos, and today's path's seconds
    (decoding and encoding)."""
    bare_s: list[float] = []
    decode_s: list[float] = []
    today_s: list[float] = []

    async def run() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for photo, request in zip(photos, requests, strict=True):
                decoding, encoding = bare.seconds(photo)
                decode_s.append(decoding)
                bare_s.append(encoding)
                today_s.append(sum(today.seconds(photo)))
                start = time.perf_counter()
                errors += await _exchange(reader, writer, request) != 200
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()
        return latencies, errors, sum(latencies)  # req/s counts the requests' own time only

    row = level(port, pid, mode, 1, lambda: asyncio.run(run()))
    return row, bare_s, decode_s, today_s


def phone_photos(files: list[Path], megapixels: float, quality: int = 90) -> list[bytes]:
    """Scene photos as a shopper's phone sends them: upscaled (bicubic) to ``megapixels`` and
    re-encoded as JPEG at ``quality``. Made here, never stored: the STL photos are 400 px wide,
    which hides the decoding cost of a real upload."""
    out = []
    for f in files:
        with Image.open(f) as im:
            scale = math.sqrt(megapixels * 1e6 / (im.width * im.height))
            size = (round(im.width * scale), round(im.height * scale))
            big = im.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def today_throughput(today: BareEncoder, photos: list[bytes], batch_sizes: list[int]) -> float:
    """Today's path's best images/s on ``photos`` (full decoding in each call, the fp32
    encoder), over the batch sizes, with one call at a time and with the encoder's lanes."""
    best = 0.0
    for callers in sorted({1, today.encoder.lanes}):
        sweep = today.throughput(photos, batch_sizes, callers, decoding=True)
        log.info("today's path, %d caller(s), images/s by batch: %s", callers, sweep)
        best = max(best, *sweep.values())
    return best


TARGETS = {  # photo set -> (1-client miss p50 at most x today's, 32-client throughput at least)
    "stl": (0.65, None),
    "phone": (0.35, 2.5),
}


def today_lines(
    rows: list[Row],
    today_s: dict[str, list[float]],
    today_best: dict[str, dict[int, float]],
    artifacts: Path,
) -> list[str]:
    """The service's misses against today's path (full decoding, the fp32 encoder, in this
    process), measured in the same run on the same photos."""
    lines = [f"today's path: full decoding + the encoder of {artifacts}, in process"]
    for name, label, mode in (
        ("stl", "STL photos", "miss"),
        ("phone", "phone photos", "phone-miss"),
    ):
        if name not in today_s:
            continue
        miss = {r.clients: r for r in rows if r.mode == mode}
        p50 = 1000 * statistics.median(today_s[name])
        at_most, at_least = TARGETS[name]
        lines.append(
            f"{label}, 1 client: miss p50 {miss[1].p50_ms:.1f} ms, today's path {p50:.1f} ms: "
            f"ratio {miss[1].p50_ms / p50:.2f} (target <= {at_most})"
        )
        for c, ips in today_best[name].items():
            target = f" (target >= {at_least})" if at_least and c >= 32 else ""
            lines.append(
                f"{label}, {c} clients: misses {miss[c].rps:.1f} req/s, today's path {ips:.1f} "
                f"images/s at its best: ratio {miss[c].rps / ips:.2f}{target}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=settings.artifacts_dir)
    parser.add_argument("--scenes", type=Path, default=settings.data_dir / "images" / "scenes")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--miss-requests", type=int, default=128, help="per level (x2 at 32)")
    parser.add_argument("--hit-requests", type=int, default=3000)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--category", default=None, help="default: the first served category")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--env", action="append", default=[], metavar="CTL_X=V", help="server setting (repeat)"
    )
    parser.add_argument(
        "--today-artifacts",
        type=Path,
        default=None,
        help="the fp32 export for today's path (full decoding, in process); default --artifacts",
    )
    parser.add_argument(
        "--phone-requests", type=int, default=32, help="phone photos per level (x2 at 32; 0: none)"
    )
    parser.add_argument("--phone-megapixels", type=float, default=12.0)
    parser.add_argument(
        "--today-batch-sizes",
        default="1,8",
        help="batch sizes of today's path's throughput sweep (full decoding dominates it)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    levels = [int(c) for c in args.clients.split(",")]
    if 1 not in levels:
        parser.error("--clients must include 1: the overhead ratio is measured there")
    sizes = [args.miss_requests * (2 if c >= 32 else 1) for c in levels]
    files = sorted(args.scenes.glob("*.jpg"))
    if len(files) < sum(sizes):
        raise SystemExit(f"need {sum(sizes)} distinct scenes in {args.scenes}, found {len(files)}")
    photos = [f.read_bytes() for f in files[: sum(sizes)]]
    phone_sizes = [args.phone_requests * (2 if c >= 32 else 1) for c in levels]
    started = time.perf_counter()
    phone = phone_photos(files[: sum(phone_sizes)], args.phone_megapixels)
    if phone:
        log.info(
            "%d phone photos of %.0f MP made in %.0f s, median %.0f KB",
            len(phone),
            args.phone_megapixels,
            time.perf_counter() - started,
            statistics.median(len(p) for p in phone) / 1024,
        )

    load_before = os.getloadavg()[0]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    port = _free_port()
    server_env = dict(e.split("=", 1) for e in args.env)
    server = start_server(args.artifacts, port, server_env)
    rows: list[Row] = []
    # clients -> {(concurrent bare calls, decoding in the bare time): (best batch, images/s)},
    # measured just before the level
    bare_best: dict[int, dict[tuple[int, bool], tuple[int, float]]] = {}
    # The server's settings (CTL_* of this process plus --env), so both run the same encoder.
    server_settings = {k.removeprefix("CTL_").lower(): v for k, v in server_env.items()}
    bare = BareEncoder(Settings(**server_settings, artifacts_dir=args.artifacts))
    today = BareEncoder(
        Settings(**server_settings, artifacts_dir=args.today_artifacts or args.artifacts),
        full_decoding=True,
    )
    today_batches = [int(b) for b in args.today_batch_sizes.split(",")]
    # photo set -> today's path: seconds per photo at 1 client; best images/s before each level
    today_s: dict[str, list[float]] = {}
    today_best: dict[str, dict[int, float]] = {"stl": {}, "phone": {}}
    try:
        base = f"http://127.0.0.1:{port}"
        category = args.category or httpx.get(f"{base}/categories").json()["categories"][0]["name"]
        log.info("category %r, levels %s, miss requests %s", category, levels, sizes)

        def build(batch: list[bytes]) -> list[bytes]:
            return [multipart_request(port, p, category, args.k) for p in batch]

        measure(port, server.pid, "warm-up", build([photos[-1]]), 1)
        offset = 0
        bare_s: list[float] = []
        decode_s: list[float] = []
        for clients, n in zip(levels, sizes, strict=True):
            batch = photos[offset : offset + n]
            offset += n
            if clients == 1:
                row, bare_s, decode_s, today_s["stl"] = interleaved(
                    port, server.pid, batch, build(batch), bare, today
                )
            else:
                today_best["stl"][clients] = today_throughput(today, batch, today_batches)
                bare_best[clients] = {}
                for callers in sorted({1, bare.encoder.lanes}):
                    for decoding in (True, False):
                        sweep = bare.throughput(batch, batch_sizes, callers, decoding)
                        best = max(sweep, key=lambda b: sweep[b])
                        bare_best[clients][callers, decoding] = (best, sweep[best])
                        log.info(
                            "bare encoder, %d caller(s), decoding charged to the %s, "
                            "images/s by batch: %s",
                            callers,
                            "encoder" if decoding else "service",
                            sweep,
                        )
                row = measure(port, server.pid, "miss", build(batch), clients)
            rows.append(row)
            log.info("%s", rows[-1])
        offset = 0
        for clients, n in zip(levels, phone_sizes if phone else [], strict=False):
            batch = phone[offset : offset + n]
            offset += n
            if clients == 1:
                row, _, _, today_s["phone"] = interleaved(
                    port, server.pid, batch, build(batch), bare, today, "phone-miss"
                )
            else:
                today_best["phone"][clients] = today_throughput(today, batch, today_batches)
                row = measure(port, server.pid, "phone-miss", build(batch), clients)
            rows.append(row)
            log.info("%s", rows[-1])
        hits = build([photos[0]]) * args.hit_requests
        for clients in levels:
            rows.append(measure(port, server.pid, "hit", hits, clients))
            log.info("%s", rows[-1])
        stored = httpx.post(
            f"{base}/scenes", files={"image": ("scene.jpg", photos[0], "image/jpeg")}
        ).json()["scene_id"]
        gets = [get_request(port, stored, category, args.k)] * args.hit_requests
        for clients in levels:
            rows.append(measure(port, server.pid, "get", gets, clients))
            log.info("%s", rows[-1])
        answer = httpx.post(
            f"{base}/complete-the-look",
            files={"image": ("scene.jpg", photos[0], "image/jpeg")},
            data={"category": category, "k": str(args.k)},
        ).content
    finally:
        server.terminate()
        server.wait(timeout=30)
    for app in ("http", "fastapi"):
        floor_server = start_floor(port, len(answer), app)
        try:
            for clients in levels:
                for mode, requests in ((f"{app}-floor", hits), (f"{app}-floor-get", gets)):
                    rows.append(measure(port, floor_server.pid, mode, requests, clients))
                    log.info("%s", rows[-1])
        finally:
            floor_server.terminate()
            floor_server.wait(timeout=30)

    by_mode = {(r.mode, r.clients): r for r in rows}
    miss = {r.clients: r for r in rows if r.mode == "miss"}
    encode_ms = 1000 * statistics.fmean(bare_s)
    decode_ms = 1000 * statistics.fmean(decode_s)
    ratio_decoding_in_service = miss[1].mean_ms / encode_ms
    ratio_decoding_in_encoder = miss[1].mean_ms / (encode_ms + decode_ms)
    hit_lines = []
    for name, mode, floor_mode in (("hit", "hit", "floor"), ("GET", "get", "floor-get")):
        for c in levels:
            row, line = by_mode[mode, c], []
            for app in ("http", "fastapi"):
                floor = by_mode[f"{app}-{floor_mode}", c]
                line.append(
                    f"the {app} floor {floor.p50_ms:.2f} ms (ratio "
                    f"{row.p50_ms / floor.p50_ms:.2f}), {floor.server_cpu_ms * 1000:.0f} us"
                )
            hit_lines.append(
                f"{c} clients: {name} p50 {row.p50_ms:.2f} ms, server CPU per request "
                f"{row.server_cpu_ms * 1000:.0f} us; " + "; ".join(line)
            )
    lines = [
        "| mode | clients | requests | errors | req/s | p50 ms | p99 ms | server mean ms "
        "| server CPU ms/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r.mode} | {r.clients} | {r.requests} | {r.errors} | {r.rps:.1f} | "
            f"{r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.server_mean_ms:.1f} | {r.server_cpu_ms:.2f} |"
            for r in rows
        ),
        "",
        f"load average (1 min) at the start {load_before:.1f}, at the end {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs",
        f"bare encoder, batch 1, interleaved with the {len(bare_s)} 1-client misses on the same "
        f"photos: {encode_ms + decode_ms:.1f} ms/image = decoding {decode_ms:.1f} "
        f"+ preparing and encoding {encode_ms:.1f}",
        "overhead ratio (1-client miss mean latency / bare batch-1 mean): "
        f"{ratio_decoding_in_service:.2f} with decoding charged to the service, "
        f"{ratio_decoding_in_encoder:.2f} charged to the encoder",
        *(
            f"{c} clients: misses {miss[c].rps:.1f} req/s; bare encoder just before, "
            f"{callers} call(s) at a time, decoding charged to the "
            f"{'encoder' if decoding else 'service'}: {ips:.1f} images/s at its best batch size "
            f"{bs}; ratio {miss[c].rps / ips:.2f}"
            for c, by_run in bare_best.items()
            for (callers, decoding), (bs, ips) in by_run.items()
        ),
        *(
            f"{c} clients: throughput ratio against the best bare figure "
            f"{miss[c].rps / max(ips for (_, d), (_, ips) in by_run.items() if not d):.2f} with "
            "decoding charged to the service, "
            f"{miss[c].rps / max(ips for (_, d), (_, ips) in by_run.items() if d):.2f} charged "
            "to the encoder"
            for c, by_run in bare_best.items()
        ),
        *hit_lines,
        *today_lines(rows, today_s, today_best, args.today_artifacts or args.artifacts),
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "bare_ms_per_image_batch1": encode_ms + decode_ms,
                    "decode_ms_per_image": decode_ms,
                    "bare_best_before_level": {
                        c: [
                            {"callers": callers, "decoding": d, "batch": bs, "images_per_s": ips}
                            for (callers, d), (bs, ips) in by_run.items()
                        ]
                        for c, by_run in bare_best.items()
                    },
                    "overhead_ratio_decoding_charged_to_service": ratio_decoding_in_service,
                    "overhead_ratio_decoding_charged_to_encoder": ratio_decoding_in_encoder,
                    "today": {
                        name: {
                            "p50_ms_batch1": 1000 * statistics.median(today_s[name]),
                            "best_images_per_s_before_level": today_best[name],
                        }
                        for name in today_s
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
