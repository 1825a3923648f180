"""The README's GPU install gives the CUDA builds, alone: checked in a fresh virtual environment
from requirements/gpu.txt. No GPU is needed, since the builds list their GPU support either way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import json, importlib.metadata as md, onnxruntime as ort, faiss
names = {d.metadata["Name"].lower() for d in md.distributions()}
print(json.dumps({
    "providers": ort.get_available_providers(),
    "faiss_gpu": hasattr(faiss, "StandardGpuResources"),
    "dists": sorted(names & {"onnxruntime", "onnxruntime-gpu", "faiss-cpu", "faiss-gpu"}),
}))
"""


@pytest.mark.gpu_install
@pytest.mark.timeout(1800)
def test_gpu_lock_installs_cuda_onnxruntime_and_gpu_faiss(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "-r", REPO / "requirements" / "gpu.txt"],
        check=True,
    )
    out = subprocess.run(
        [venv / "bin" / "python", "-c", PROBE], check=True, capture_output=True, text=True
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert "CUDAExecutionProvider" in found["providers"], found
    assert found["faiss_gpu"], found
    assert found["dists"] == ["faiss-gpu", "onnxruntime-gpu"], found
