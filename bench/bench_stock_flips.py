"""Stock-feed benchmark: 10,000 ``PATCH /admin/products/{id}`` stock flips through one replica,
and how long a second replica takes to serve the last one.

Two ``ctl serve`` processes on a private copy of the artifacts (the flips do not touch the
original's attributes), without Redis (the second replica follows by polling, the slower path;
``--redis URL`` for announcements). Prints the p50/p90 of one PATCH, the wall time of all flips
one after the other from one client, the second replica's lag after the last, and, as the
baseline measured in the same run, the p50 of ``GET /products/{id}`` (the cheapest route that
reads the catalog) and the time of one flip of every product (at most ``--flips``) written as
one transaction (``AttributeStore.update``, the path of an import).

    python bench/bench_stock_flips.py --artifacts artifacts --flips 10000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from index.store import IndexStore  # noqa: E402

TOKEN = "bench-stock-flips"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(artifacts: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, str(REPO / "cli.py"), "serve", "--artifacts", str(artifacts),
               "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"ctl serve exited with {proc.returncode}")
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("ctl serve did not get ready in 300 s")


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--flips", type=int, default=10_000)
    p.add_argument("--redis", default="", help="a Redis URL for announcements (default: none)")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-flips-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        artifacts = Path(shutil.copytree(args.artifacts, work / "artifacts"))
        store = IndexStore.for_artifacts(artifacts)
        ids = sorted(store.categories_of())
        env = {"CTL_ADMIN_TOKEN": TOKEN, "CTL_REDIS_URL": args.redis, "CTL_FOLLOW_INTERVAL_S": "1"}
        if not args.redis:
            env.pop("CTL_REDIS_URL")
        urls = []
        for _ in range(2):
            proc, url = _serve(artifacts, env)
            procs.append(proc)
            urls.append(url)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=urls[0], timeout=30) as client:
            reads = []
            for n in range(1000):
                start = time.perf_counter()
                client.get(f"/products/{ids[n % len(ids)]}").raise_for_status()
                reads.append(time.perf_counter() - start)
            patches = []
            started = time.perf_counter()
            for n in range(args.flips):
                pid = ids[n % len(ids)]
                start = time.perf_counter()
                r = client.patch(
                    f"/admin/products/{pid}", json={"in_stock": n % 2 == 0}, headers=headers
                )
                r.raise_for_status()
                patches.append(time.perf_counter() - start)
            wall = time.perf_counter() - started
        last, want = ids[(args.flips - 1) % len(ids)], (args.flips - 1) % 2 == 0
        lag_start = time.perf_counter()
        while httpx.get(f"{urls[1]}/products/{last}").json()["in_stock"] is not want:
            time.sleep(0.005)
        lag = time.perf_counter() - lag_start
        bulk = {pid: {"in_stock": True} for pid in ids[: args.flips]}
        start = time.perf_counter()
        store.attributes.update(bulk)
        bulk_s = time.perf_counter() - start
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "products": len(ids),
        "flips": args.flips,
        "patch_p50_ms": round(1000 * statistics.median(patches), 2),
        "patch_p90_ms": round(1000 * _p(patches, 90), 2),
        "flips_wall_s": round(wall, 2),
        "flips_per_s": round(args.flips / wall, 1),
        "second_replica_lag_after_last_s": round(lag, 3),
        "baseline_get_product_p50_ms": round(1000 * statistics.median(reads), 2),
        "one_transaction_products": len(bulk),
        "one_transaction_s": round(bulk_s, 3),
        "redis": bool(args.redis),
    }
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
