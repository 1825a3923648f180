"""GPU check, ready to run on a machine with an NVIDIA GPU and no internet, in under 8 minutes.

1. The GPU: ``nvidia-smi -L`` must list one, else it stops at once (exit 2) and says so.
2. A fresh virtual environment with ``requirements/gpu.txt`` (the serving stack's CUDA builds).
   Offline, ``--wheels DIR`` installs from a wheelhouse made beforehand on a machine of the same
   platform (``pip download -r requirements/gpu.txt -d DIR``).
3. A small run made here (efficientnet_lite0, heads with random weights: the backbone is what
   costs), exported as fp16 (for the GPU) and as fp32 (the CPU reference), each with an index
   of the catalog built in its own environment.
4. The fp16 artifacts served from the GPU environment: /readyz's execution providers, FAISS
   device and warnings; miss p50 at 1 client and miss throughput at 32 clients.
5. Parity with the CPU answers (fp32, this environment, ``CTL_DEVICE=cpu``) for 50 scenes: the
   same top-10 and d* within 1e-3.

Exits 1 when the encoders do not run on CUDA or parity fails; prints a JSON report (and writes
it with ``--out``). Run it from the training environment (it needs torch to make the run):

    python bench/gpu_check.py --wheels /path/to/wheelhouse --out gpu_check.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_service import _free_port, _started, load, multipart_request  # noqa: E402

from runtime.config import RuntimeSettings  # noqa: E402

log = logging.getLogger("gpu_check")

PARITY_SCENES = 50
D_STAR_TOL = 1e-3
K = 10


class CheckFailed(Exception):
    """A step of the check failed; the message says which and why."""


def gpu_names() -> list[str]:
    """The NVIDIA GPUs ``nvidia-smi -L`` lists; raises CheckFailed when there are none."""
    if shutil.which("nvidia-smi") is None:
        raise CheckFailed("no NVIDIA GPU: nvidia-smi is not installed (no NVIDIA driver)")
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        raise CheckFailed(f"no usable NVIDIA GPU: nvidia-smi -L failed: {exc}") from None
    gpus = [line for line in out.splitlines() if line.startswith("GPU ")]
    if not gpus:
        raise CheckFailed("no NVIDIA GPU: nvidia-smi -L lists none")
    return gpus


def make_venv(venv: Path, wheels: Path | None) -> Path:
    """A fresh environment with requirements/gpu.txt; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if wheels is not None:
        pip += ["--no-index", "--find-links", str(wheels)]
    done = subprocess.run([*pip, "-r", str(REPO / "requirements" / "gpu.txt")])
    if done.returncode:
        raise CheckFailed(f"installing requirements/gpu.txt failed (pip exit {done.returncode})")
    return venv / "bin" / "python"


def make_run(run_dir: Path, categories: list[str], backbone_name: str) -> Path:
    """A run directory: ``backbone_name`` with heads of random weights (what export reads)."""
    import torch

    from model.backbones import build_backbone
    from model.ctl import CTLModel

    backbone = build_backbone(backbone_name)
    torch.manual_seed(0)
    model = CTLModel(backbone.global_dim, backbone.local_dim, categories).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"backbone": backbone_name, "backbone_weights": None, "model": model.config()}
    torch.save({"model": model.state_dict(), "config": config}, run_dir / "checkpoint.pt")
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def ctl(python: Path | str, args: list[str], env: dict[str, str]) -> None:
    """``ctl ARGS`` run by ``python`` (the project from this checkout, not installed)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    done = subprocess.run([str(python), str(REPO / "cli.py"), *args], env=full)
    if done.returncode:
        raise CheckFailed(f"ctl {' '.join(args[:2])} exited {done.returncode}")


def serve(python: Path | str, artifacts: Path, env: dict[str, str]) -> tuple[Any, int]:
    """``ctl serve`` by ``python`` on a free port, once /readyz answers."""
    port = _free_port()
    command = [str(python), str(REPO / "cli.py"), "serve", "--artifacts", str(artifacts)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return _started(subprocess.Popen(command, env=full), port), port


def answers(port: int, photos: list[bytes], categories: list[str]) -> list[list[dict]]:
    """Top-K of each photo, for the categories in turn."""
    out = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for i, photo in enumerate(photos):
            r = client.post(
                "/complete-the-look",
                files={"image": ("scene.jpg", photo, "image/jpeg")},
                data={"category": categories[i % len(categories)], "k": str(K)},
            )
            r.raise_for_status()
            out.append(r.json()["products"])
    return out


def parity(gpu: list[list[dict]], cpu: list[list[dict]]) -> dict[str, Any]:
    """Scenes whose top-K ids differ, and the largest d* difference over the shared ids."""
    differ, worst = 0, 0.0
    for g, c in zip(gpu, cpu, strict=True):
        if [p["id"] for p in g] != [p["id"] for p in c]:
            differ += 1
        d_cpu = {p["id"]: p["d_star"] for p in c}
        worst = max([worst, *(abs(p["d_star"] - d_cpu[p["id"]]) for p in g if p["id"] in d_cpu)])
    return {
        "scenes": len(gpu),
        "top_k_differs": differ,
        "max_d_star_diff": worst,
        "ok": differ == 0 and worst <= D_STAR_TOL,
    }


def speed(port: int, photos: list[bytes], category: str) -> dict[str, float]:
    """Miss p50 at 1 client and miss throughput at 32 clients, on distinct photos."""
    n1 = len(photos) // 3
    one = [multipart_request(port, p, category, K) for p in photos[:n1]]
    many = [multipart_request(port, p, category, K) for p in photos[n1:]]
    latencies, errors, _ = asyncio.run(load(port, one, 1))
    lat32, errors32, wall = asyncio.run(load(port, many, 32))
    return {
        "miss_p50_ms_1_client": 1000 * statistics.median(latencies),
        "miss_rps_32_clients": len(lat32) / wall,
        "errors": errors + errors32,
    }


def check(args: argparse.Namespace, work: Path, gpus: list[str]) -> dict[str, Any]:
    """Steps 2 to 5; the report."""
    from model.export import export_run
    from training.stl import STLData

    report: dict[str, Any] = {"gpus": gpus}
    started = time.perf_counter()
    python = make_venv(work / "venv-gpu", args.wheels)
    report["install_s"] = round(time.perf_counter() - started, 1)
    categories = STLData.load(args.data).category_names()
    run = make_run(work / "run", categories, args.backbone)
    for precision in ("fp16", "fp32"):
        export_run(run, work / f"artifacts-{precision}", precision=precision)
    data = ["--data", str(args.data)]
    ctl(python, ["index", "build", "--artifacts", str(work / "artifacts-fp16"), *data], {})
    cpu_env = {"CTL_DEVICE": "cpu"}
    ctl(
        sys.executable,
        ["index", "build", "--artifacts", str(work / "artifacts-fp32"), *data],
        cpu_env,
    )
    scenes = sorted((args.data / "images" / "scenes").glob("*.jpg"))
    photos = [p.read_bytes() for p in scenes[: PARITY_SCENES + args.speed_scenes]]
    if len(photos) < PARITY_SCENES + args.speed_scenes:
        raise CheckFailed(f"need {PARITY_SCENES + args.speed_scenes} scenes in {args.data}")
    server, port = serve(python, work / "artifacts-fp16", {"CTL_DEVICE": "cuda"})
    try:
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).json()
        report["readyz"] = {k: ready.get(k) for k in ("providers", "faiss_device", "warnings")}
        report["cuda"] = "CUDAExecutionProvider" in (ready.get("providers") or [])
        gpu = answers(port, photos[:PARITY_SCENES], categories)
        report["speed"] = speed(port, photos[PARITY_SCENES:], categories[0])
    finally:
        server.terminate()
        server.wait(timeout=30)
    server, port = serve(sys.executable, work / "artifacts-fp32", cpu_env)
    try:
        cpu = answers(port, photos[:PARITY_SCENES], categories)
    finally:
        server.terminate()
        server.wait(timeout=30)
    report["parity"] = parity(gpu, cpu)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=None, help="wheelhouse (offline install)")
    parser.add_argument("--data", type=Path, default=RuntimeSettings().data_dir)
    parser.add_argument("--work", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--speed-scenes", type=int, default=288, help="distinct photos timed")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        gpus = gpu_names()  # before minutes of work: no GPU, no check
        with tempfile.TemporaryDirectory(prefix="ctl-gpu-check-") as tmp:
            report = check(args, args.work or Path(tmp), gpus)
    except CheckFailed as exc:
        sys.stderr.write(f"gpu_check: FAILED: {exc}\n")
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    failed = [
        *(["the encoders do not run on CUDA"] if not report["cuda"] else []),
        *(
            [f"parity with the CPU answers: {report['parity']}"]
            if not report["parity"]["ok"]
            else []
        ),
    ]
    if failed:
        sys.stderr.write(f"gpu_check: FAILED: {'; '.join(failed)}\n")
        return 1
    sys.stderr.write(f"gpu_check: passed in {report['seconds']} s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
