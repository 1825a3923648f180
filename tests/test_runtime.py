"""runtime/encoder.py: checksum verification, providers, the query vector, no torch on the path."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from factories import FakeEncoder
from PIL import Image
from service_support import scene_files, tiny_artifacts

from index.search import exact_distances
from runtime.artifacts import ArtifactError, read_manifest
from runtime.encoder import Encoder, OnnxEncoder
from runtime.sessions import gpu_fallback_warning, select_providers


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys, runtime.encoder, index.search, index.store, index.build, index.cli\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fake_encoder_is_an_encoder() -> None:
    enc = FakeEncoder(["A", "B"])
    assert isinstance(enc, Encoder)
    img = Image.new("RGB", (40, 30), (200, 10, 10))
    (emb,) = enc.embed_scenes([img])
    assert emb.attention.shape == (2, 49)
    np.testing.assert_allclose(emb.attention.sum(axis=1), 1.0, rtol=1e-5)


def test_query_vector_gives_d_star() -> None:
    """d*(s, p) = 2 - <q_c, f_p> for every category c, as the index relies on."""
    enc = FakeEncoder(["A", "B", "C"])
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    products = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in "abcd"]
    (emb,) = enc.embed_scenes([scene])
    f_p = enc.embed_products(products)
    q = emb.f_s[None, :] + emb.attention @ emb.f_i  # q_c as index.search.recommend builds it
    for c in range(3):
        d_star, _, _ = exact_distances(emb.f_s, emb.f_i, emb.attention[c], f_p)
        np.testing.assert_allclose(d_star, 2.0 - f_p @ q[c], atol=1e-5)


def test_providers() -> None:
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    assert select_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ArtifactError, match="unknown device"):
        select_providers("tpu")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ArtifactError, match="onnxruntime-gpu"):
            select_providers("cuda")


def test_gpu_build_on_the_cpu_is_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_only = ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: cpu_only)
    assert gpu_fallback_warning(cpu_only) is None
    gpu_build = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu_build)
    assert gpu_fallback_warning(gpu_build) is None
    warning = gpu_fallback_warning(cpu_only)
    assert warning is not None and "onnxruntime-gpu" in warning


def test_not_an_artifacts_dir(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="ctl export"):
        OnnxEncoder.from_artifacts(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"version": "x"}))
    with pytest.raises(ArtifactError, match="lacks the keys"):
        read_manifest(tmp_path)


def test_overlapping_calls_run_on_lanes_with_the_same_results(
    stl_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifacts = tiny_artifacts(stl_dir)
    assert OnnxEncoder.from_artifacts(artifacts, device="cpu", lanes=1).lanes == 1
    enc = OnnxEncoder.from_artifacts(artifacts, device="cpu", threads=2, lanes=2)
    assert enc.lanes == 2
    images = [Image.open(p).convert("RGB") for p in scene_files(stl_dir, 3)]
    alone = enc.embed_scenes(images)

    # Hold the first call inside the main session, so that the second surely overlaps it.
    entered, release = threading.Event(), threading.Event()
    main_run = enc._scene.run

    def held(*args: Any) -> Any:
        entered.set()
        assert release.wait(30)
        return main_run(*args)

    lane_calls: list[int] = []

    def counted(run: Any) -> Any:
        def lane_run(*args: Any) -> Any:
            lane_calls.append(1)
            return run(*args)

        return lane_run

    monkeypatch.setattr(enc._scene, "run", held)
    for lane in enc._lanes:
        monkeypatch.setattr(lane, "run", counted(lane.run))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(enc.embed_scenes, images)
        assert entered.wait(30)
        second = enc.embed_scenes(images)
        release.set()
        results = [first.result(), second]
    assert len(lane_calls) == 1, "the overlapping call ran on a lane, the first on the main"
    for got in results:
        for a, b in zip(alone, got, strict=True):
            np.testing.assert_allclose(a.f_s, b.f_s, atol=1e-5)
            np.testing.assert_allclose(a.f_i, b.f_i, atol=1e-5)
            np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)


def test_warm_up_runs_every_session_at_the_batch_size(
    stl_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    enc = OnnxEncoder.from_artifacts(tiny_artifacts(stl_dir), device="cpu", threads=2, lanes=2)
    batches: list[int] = []

    def recording(run: Any) -> Any:
        def recorded(names: Any, feeds: dict[str, np.ndarray]) -> Any:
            batches.append(len(feeds["image"]))
            return run(names, feeds)

        return recorded

    for session in (enc._scene, *enc._lanes, enc._product):
        monkeypatch.setattr(session, "run", recording(session.run))
    enc.warm_up(3)
    assert batches == [3, 3, 3, 1], "main scene session, two lanes, product session"
