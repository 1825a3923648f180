"""index/store.py: versions, checksums, and the atomic switch that survives killed builds."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from factories import FakeEncoder, make_image_catalog
from PIL import Image

from index.build import build_index
from index.store import (
    PRODUCT_ID_PATTERN,
    CategoryData,
    IndexStore,
    IndexStoreError,
    InvalidProductIdError,
)

CATS = ["Shoes", "Pants"]


def _groups(seed: int, n: int = 30) -> dict[str, CategoryData]:
    rng = np.random.default_rng(seed)
    out = {}
    for c in CATS:
        emb = rng.normal(size=(n, 8)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        out[c] = CategoryData([f"{c}-{seed}-{i}" for i in range(n)], emb)
    return out


def test_publish_load_and_versions(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    assert store.current() is None
    with pytest.raises(IndexStoreError, match="ctl index build"):
        store.load()
    v1 = store.publish("m1", 8, _groups(1), ann_threshold=1000)
    v2 = store.publish("m1", 8, _groups(2, n=5), ann_threshold=1000)
    assert store.current() == v2
    assert store.versions() == sorted([v1, v2])
    catalog = store.load()
    assert (catalog.version, catalog.model_version, len(catalog)) == (v2, "m1", 10)
    assert catalog.count("Shoes") == 5
    old = store.load(v1)
    np.testing.assert_array_equal(old.embeddings(["Pants-1-3"])[0], _groups(1)["Pants"].emb[3])


def test_tampered_version_is_refused(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    v = store.publish("m1", 8, _groups(1), ann_threshold=1000)
    path = store.versions_dir / v / "pants.emb.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexStoreError, match=r"pants\.emb\.npy is missing or does not match"):
        store.load()


def test_failed_verification_keeps_the_current_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = IndexStore(tmp_path / "index")
    v1 = store.publish("m1", 8, _groups(1), ann_threshold=1000)
    monkeypatch.setattr("index.store._finds_itself", lambda cat, row: row != 3)
    with pytest.raises(IndexStoreError, match="do not find themselves first"):
        store.publish("m1", 8, _groups(2), ann_threshold=1000)
    assert store.current() == v1
    assert store.versions() == [v1]
    assert [p.name for p in store.versions_dir.iterdir()] == [v1]


def test_old_versions_are_pruned(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    versions = [store.publish("m1", 8, _groups(s, n=3), 1000, keep=2) for s in range(4)]
    assert store.versions() == versions[-2:]


SLOW_BUILD = """
import sys, time
from pathlib import Path
import index.build, index.store
from factories import FakeEncoder
from index.build import build_index
from index.store import IndexStore

phase, root, data, cache = sys.argv[1:5]
index.build.CHUNK = 4

class Slow(FakeEncoder):
    def embed_products(self, images):
        time.sleep(0.2)
        return super().embed_products(images)

if phase == "publishing":
    verify = index.store.IndexStore._verify
    def stall(self, vdir, expected):
        print("VERIFYING", flush=True)
        time.sleep(60)
    index.store.IndexStore._verify = stall

build_index(IndexStore(Path(root)), Slow(["Shoes", "Pants"]), Path(data), Path(cache), batch_size=2)
"""


def _wait_for(proc: subprocess.Popen[str], ready: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        if proc.poll() is not None:
            raise AssertionError(f"build ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("the build never reached the point to kill it at")


@pytest.mark.parametrize("phase", ["embedding", "publishing"])
def test_killed_build_leaves_the_previous_version_serving(
    tmp_path: Path, phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = FakeEncoder(CATS)
    data = make_image_catalog(tmp_path / "data", {"Shoes": 6, "Pants": 4})
    store = IndexStore(tmp_path / "artifacts" / "index")
    v1 = build_index(store, encoder, data).version
    make_image_catalog(data, {"Shoes": 10, "Pants": 10}, seed=1)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_BUILD, phase, str(store.root), str(data), str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        if phase == "embedding":
            _wait_for(proc, lambda: len(list(cache.glob("*/chunk-*.npz"))) >= 2)
        else:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "VERIFYING"
            assert list(store.versions_dir.glob(".tmp-*"))  # the new version is staged
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert store.current() == v1
    assert store.versions() == [v1]
    catalog = store.load()
    assert (catalog.version, len(catalog)) == (v1, 10)
    ids = [pid for c in catalog.categories for pid in catalog.category(c).ids]
    assert all(catalog.product(pid).image.is_file() for pid in ids)  # type: ignore[union-attr]

    monkeypatch.setattr("index.build.CHUNK", 4)  # the chunking of the killed build
    report = build_index(store, encoder, data, cache)  # resumes, cleans the leftovers
    assert report.cached > 0
    assert store.current() == report.version != v1
    assert len(store.load()) == 30
    assert not list(store.versions_dir.glob(".tmp-*"))
    assert (
        json.loads((store.versions_dir / report.version / "manifest.json").read_text())["count"]
        == 30
    )


BAD_IDS = ["../../pwned", "/tmp/ctl-abs-pwned", "a/b", "x\0y", ".", "..", ".hidden", "", "x" * 129]


@pytest.mark.parametrize("pid", BAD_IDS)
def test_the_store_writes_images_only_inside_its_folder(tmp_path: Path, pid: str) -> None:
    """Whatever id it is given (the API checks too; the store must not rely on that)."""
    store = IndexStore(tmp_path / "artifacts" / "index")
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(InvalidProductIdError, match="invalid product id"):
        store.put_image(pid, Image.new("RGB", (4, 4)), None)
    with pytest.raises(InvalidProductIdError):
        store.image_path(pid)
    assert {p for p in tmp_path.rglob("*")} == before
    assert not Path("/tmp/ctl-abs-pwned.jpg").exists()


def test_valid_ids_are_the_documented_format(tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    for pid in ("0a1b2c3d4e5f", "sku-1", "A.b_C-9", "x" * 128, "-x", "_"):
        store.put_image(pid, Image.new("RGB", (4, 4)), None)
        assert store.image_path(pid).parent == store.images_dir
        assert store.image_path(pid).is_file()
    assert re.fullmatch(PRODUCT_ID_PATTERN, "a.b") and not re.fullmatch(PRODUCT_ID_PATTERN, "..")


def test_error_messages_quote_a_bounded_prefix() -> None:
    text = str(InvalidProductIdError("y" * 1_000_000))
    assert len(text) < 300 and "1000000 characters" in text
