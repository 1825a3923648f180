"""Admin endpoints: the token, reloads under load with zero failures, catalog updates."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_support import (
    admin_headers,
    copy_artifacts,
    post_scene,
    scene,
    serve,
    settings_for,
    tiny_artifacts,
)

from index.build import remove_products
from index.search import CatalogIndex
from index.store import IndexStore
from runtime.encoder import Encoder, OnnxEncoder, SceneEmbedding
from service.config import Settings
from service.serving import load_current_catalog


class HeldEncoder:
    """The real ONNX encoder, held until ``released`` is set, so that requests are surely in
    flight; ``entered`` is set when a batch is inside it."""

    def __init__(self, inner: OnnxEncoder, entered: threading.Event, released: threading.Event):
        self._inner, self.entered, self.released = inner, entered, released
        self.categories, self.dim = inner.categories, inner.dim
        self.version, self.providers, self.lanes = inner.version, inner.providers, inner.lanes
        self.input_size, self.precision = inner.input_size, inner.precision

    def prepare(self, image: Image.Image) -> Image.Image:
        return self._inner.prepare(image)

    def embed_scenes(self, images: Sequence[Image.Image]) -> list[SceneEmbedding]:
        self.entered.set()
        assert self.released.wait(timeout=60), "the test never released the encoder"
        return self._inner.embed_scenes(images)

    def embed_products(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._inner.embed_products(images)


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (admin_headers("wrong"), 403), ({"Authorization": "Basic abc"}, 401)],
)
def test_admin_needs_the_token(stl_dir: Path, headers: dict[str, str], status: int) -> None:
    with serve(settings_for(tiny_artifacts(stl_dir), stl_dir)) as client:
        for method, path in (("POST", "/admin/reload"), ("DELETE", "/admin/products/x")):
            r = client.request(method, path, headers=headers)
            assert r.status_code == status, r.text


def test_admin_is_off_without_a_configured_token(stl_dir: Path) -> None:
    settings = settings_for(tiny_artifacts(stl_dir), stl_dir, admin_token=None)
    with serve(settings) as client:
        r = client.post("/admin/reload", headers=admin_headers())
        assert r.status_code == 403 and "CTL_ADMIN_TOKEN" in r.json()["detail"]


def test_reload_under_load_fails_no_request(stl_dir: Path, tmp_path: Path) -> None:
    artifacts = copy_artifacts(stl_dir, tmp_path)
    store = IndexStore.for_artifacts(artifacts)
    old_version = store.current()
    # No polling of CURRENT (service/follow.py): the version published below must reach the
    # service through this reload, not through the follower, whose poll could come first.
    settings = settings_for(artifacts, stl_dir, batch_max_size=2, follow_interval_s=0)
    entered, released = threading.Event(), threading.Event()

    def held_loader(settings: Settings) -> Encoder:
        inner = OnnxEncoder.from_artifacts(settings.artifacts_dir, device="cpu")
        return HeldEncoder(inner, entered, released)

    released.set()  # until the requests below
    with serve(settings, encoder_loader=held_loader) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        victim = store.load().category(category).ids[-1]
        encoder = OnnxEncoder.from_artifacts(artifacts, device="cpu")
        remove_products(store, encoder, [victim])  # a new version, published on disk
        new_version = store.current()

        def request(n: int) -> tuple[int, str]:
            r = post_scene(client, scene(stl_dir, 40 + n), category, k=5)
            return r.status_code, r.json().get("index_version", r.text)

        entered.clear()
        released.clear()
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(request, n) for n in range(12)]
            try:
                assert entered.wait(timeout=60), "no request reached the encoder"
                reload = client.post("/admin/reload", headers=admin_headers())
            finally:
                released.set()  # the requests in flight go on, on the unit they hold
            results = [f.result() for f in futures]
        assert reload.status_code == 200, reload.text
        assert reload.json()["previous_index_version"] == old_version
        assert reload.json()["index_version"] == new_version
        assert [status for status, _ in results] == [200] * 12, results
        served = {version for _, version in results}
        assert old_version in served, "no request was in flight during the reload"
        after = post_scene(client, scene(stl_dir, 60), category, k=5).json()
        assert after["index_version"] == new_version
        assert victim not in [p["id"] for p in after["products"]]
        assert client.get("/readyz").json()["index_version"] == new_version


def test_failed_reload_keeps_serving(stl_dir: Path, tmp_path: Path) -> None:
    artifacts = copy_artifacts(stl_dir, tmp_path)
    with serve(settings_for(artifacts, stl_dir)) as client:
        before = client.get("/readyz").json()
        manifest = artifacts / "manifest.json"
        tampered = json.loads(manifest.read_text())
        tampered["files"]["scene.onnx"] = "0" * 64
        manifest.write_text(json.dumps(tampered))
        r = client.post("/admin/reload", headers=admin_headers())
        assert r.status_code == 409 and "checksum" in r.json()["detail"]
        assert client.get("/readyz").json() == before
        category = client.get("/categories").json()["categories"][0]["name"]
        assert post_scene(client, scene(stl_dir, 0), category).status_code == 200


def _photo_not_in(catalog: CatalogIndex, stl_dir: Path) -> Path:
    """A product photo of the data that the catalog does not hold (to add it)."""
    return next(
        p
        for p in sorted((stl_dir / "images" / "products").glob("*.jpg"))
        if catalog.product(p.stem) is None
    )


def test_add_and_remove_products(stl_dir: Path, tmp_path: Path) -> None:
    artifacts = copy_artifacts(stl_dir, tmp_path)
    catalog = IndexStore.for_artifacts(artifacts).load()
    category = catalog.categories[0]
    photo = _photo_not_in(catalog, stl_dir)
    with serve(settings_for(artifacts, stl_dir)) as client:
        add = client.post(
            "/admin/products",
            headers=admin_headers(),
            data={"product_id": "new-sku-1", "category": category},
            files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")},
        )
        assert add.status_code == 200, add.text
        assert add.json()["added"] == ["new-sku-1"] and add.json()["products"] == len(catalog) + 1
        assert client.get("/products/new-sku-1").json()["category"] == category
        assert client.get("/products/new-sku-1/image").content == photo.read_bytes()
        again = client.post(
            "/admin/products",
            headers=admin_headers(),
            data={"product_id": "new-sku-1", "category": category},
            files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")},
        )
        assert again.status_code == 409 and "already" in again.json()["detail"]
        bad_cat = client.post(
            "/admin/products",
            headers=admin_headers(),
            data={"product_id": "new-sku-2", "category": "Hats"},
            files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")},
        )
        assert bad_cat.status_code == 422 and category in bad_cat.json()["detail"]
        not_image = client.post(
            "/admin/products",
            headers=admin_headers(),
            data={"product_id": "new-sku-3", "category": category},
            files={"image": ("p.txt", b"text", "text/plain")},
        )
        assert not_image.status_code == 415

        gone = client.delete("/admin/products/new-sku-1", headers=admin_headers())
        assert gone.status_code == 200 and gone.json()["removed"] == ["new-sku-1"]
        assert client.get("/products/new-sku-1").status_code == 404
        missing = client.delete("/admin/products/new-sku-1", headers=admin_headers())
        assert missing.status_code == 404


EVIL_IDS = [
    "../../pwned",
    "../pwned2",
    "/tmp/ctl-admin-abs-pwned",
    "a/b",
    "x\0y",
    ".",
    "..",
    "y" * 129,
]


def test_bad_product_ids_are_422_naming_the_format_and_write_nothing(
    stl_dir: Path, tmp_path: Path
) -> None:
    artifacts = copy_artifacts(stl_dir, tmp_path)
    before = set(tmp_path.rglob("*"))
    category = IndexStore.for_artifacts(artifacts).load().categories[0]
    photo = next((stl_dir / "images" / "products").glob("*.jpg")).read_bytes()
    with serve(settings_for(artifacts, stl_dir)) as client:
        for pid in EVIL_IDS:
            r = client.post(
                "/admin/products",
                headers=admin_headers(),
                data={"product_id": pid, "category": category},
                files={"image": ("p.jpg", photo, "image/jpeg")},
            )
            assert r.status_code == 422, (pid, r.status_code, r.text)
            assert "product_id" in r.json()["detail"], r.text
            assert len(r.text) < 1000
        for pid in (".hidden", "y" * 129, "a%2Fb"):
            r = client.delete(f"/admin/products/{pid}", headers=admin_headers())
            assert r.status_code in (404, 422) and len(r.text) < 1000, r.text
    assert set(tmp_path.rglob("*")) == before, "a rejected id left a file behind"
    assert not Path("/tmp/ctl-admin-abs-pwned.jpg").exists()


def test_the_admin_token_is_checked_before_the_body_is_read(stl_dir: Path) -> None:
    """No token: 401 without reading a byte of the (here endless) body."""
    from service.app import create_app

    app = create_app(settings_for(tiny_artifacts(stl_dir), stl_dir))
    reads: list[int] = []
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        reads.append(1)
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": len(reads) < 160}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    for headers in ([], [(b"authorization", b"Bearer wrong")]):
        reads.clear()
        sent.clear()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/admin/products",
            "raw_path": b"/admin/products",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"content-type", b"multipart/form-data; boundary=b"), *headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": {},
        }
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
        assert sent[0]["status"] in (401, 403)
        assert reads == [], f"the body was read ({len(reads)} chunks) before the token check"


def test_the_writing_replica_loads_each_published_version_once(
    stl_dir: Path, tmp_path: Path
) -> None:
    """The admin route loads what it published while the process's follower, polling fast,
    sees the same new version: one load between them (the probe saw two on some writes)."""
    artifacts = copy_artifacts(stl_dir, tmp_path)
    catalog = IndexStore.for_artifacts(artifacts).load()
    category = catalog.categories[0]
    photo = _photo_not_in(catalog, stl_dir)
    loads: list[str] = []

    def slow_catalog_loader(settings: Settings) -> CatalogIndex:
        loaded = load_current_catalog(settings)
        loads.append(loaded.version)
        time.sleep(0.5)  # the follower polls meanwhile and sees the new version too
        return loaded

    settings = settings_for(artifacts, stl_dir, follow_interval_s=0.05)
    with serve(settings, catalog_loader=slow_catalog_loader) as client:
        for n in range(3):
            add = client.post(
                "/admin/products",
                headers=admin_headers(),
                data={"product_id": f"once-{n}", "category": category},
                files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")},
            )
            assert add.status_code == 200, add.text
        time.sleep(1.0)  # time for a late second load by the follower
        versions = IndexStore.for_artifacts(artifacts).versions()
    assert len(set(loads)) == 4 and len(loads) == 4, (loads, versions)
