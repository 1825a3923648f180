"""Scenes as a resource (upload once, then GET), and the encoder passes each answer costs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
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
from index.store import IndexStore
from runtime.encoder import Encoder, OnnxEncoder, SceneEmbedding
from service.config import Settings
from service.serving import Serving


@pytest.fixture(scope="module")
def client(stl_dir: Path) -> Iterator[TestClient]:
    with serve(settings_for(tiny_artifacts(stl_dir), stl_dir)) as c:
        yield c


@pytest.fixture(scope="module")
def categories(client: TestClient) -> list[str]:
    return [c["name"] for c in client.get("/categories").json()["categories"]]


def upload(client: TestClient, data: bytes) -> Any:
    return client.post("/scenes", files={"image": ("scene.jpg", data, "image/jpeg")})


def test_upload_once_then_ask_with_get(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    data = scene(stl_dir, 70)
    created = upload(client, data)
    assert created.status_code == 201, created.text
    scene_id = created.json()["scene_id"]
    assert scene_id == hashlib.sha256(data).hexdigest()
    assert created.json()["expires_in"] == client.app.state.settings.cache_ttl_s
    again = upload(client, data)
    assert (again.status_code, again.json()["scene_id"]) == (200, scene_id)

    posted = post_scene(client, data, categories[1], k=3, explain="true").json()
    got = client.get(
        f"/scenes/{scene_id}/complete-the-look",
        params={"category": categories[1], "k": 3, "explain": "true"},
    )
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["products"] == posted["products"] and body["attention"] == posted["attention"]
    assert (body["scene_sha256"], body["category"], body["k"]) == (scene_id, categories[1], 3)

    everything = client.get(
        f"/scenes/{scene_id}/complete-the-look/all",
        params={"categories": categories[:2], "k": 2},
    )
    assert everything.status_code == 200, everything.text
    results = everything.json()["results"]
    assert list(results) == categories[:2]
    assert results[categories[1]] == posted["products"][:2]


def test_unknown_and_malformed_scene_ids(client: TestClient, categories: list[str]) -> None:
    unknown = "0" * 64
    for path in ("complete-the-look", "complete-the-look/all"):
        r = client.get(f"/scenes/{unknown}/{path}", params={"category": categories[0]})
        assert r.status_code == 404, r.text
        assert "upload the photo again with POST /scenes" in r.json()["detail"]
    bad = client.get("/scenes/not-a-sha/complete-the-look", params={"category": categories[0]})
    assert bad.status_code == 422 and "scene_id" in bad.json()["detail"]


def test_bad_questions_about_a_known_scene_are_422(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    scene_id = upload(client, scene(stl_dir, 71)).json()["scene_id"]
    path = f"/scenes/{scene_id}/complete-the-look"
    wrong = client.get(path, params={"category": "Hats"})
    assert wrong.status_code == 422 and categories[0] in wrong.json()["detail"]
    too_many = client.get(path, params={"category": categories[0], "k": 1000})
    assert too_many.status_code == 422 and "k must be between 1 and" in too_many.json()["detail"]
    not_image = client.post("/scenes", files={"image": ("a.txt", b"hello", "text/plain")})
    assert not_image.status_code == 415, not_image.text


def test_an_evicted_scene_is_404(stl_dir: Path) -> None:
    settings = settings_for(tiny_artifacts(stl_dir), stl_dir, cache_size=1)
    with serve(settings) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        first = upload(client, scene(stl_dir, 72)).json()["scene_id"]
        upload(client, scene(stl_dir, 73))  # the only cache slot now holds this one
        r = client.get(f"/scenes/{first}/complete-the-look", params={"category": category})
        assert r.status_code == 404, r.text


def test_posting_a_scene_again_starts_its_expiry_anew(stl_dir: Path) -> None:
    """The answer says ``expires_in`` from now: a repeat POST must make that true (the probe
    saw the scene expire at the first POST's time, in memory and in Redis alike)."""
    settings = settings_for(tiny_artifacts(stl_dir), stl_dir, cache_ttl_s=3)
    with serve(settings) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        first = upload(client, scene(stl_dir, 74))
        assert first.status_code == 201 and first.json()["expires_in"] == 3
        time.sleep(2)
        again = upload(client, scene(stl_dir, 74))
        assert again.status_code == 200 and again.json()["expires_in"] == 3
        time.sleep(2)  # past the first POST's expiry, within the second's
        scene_id = first.json()["scene_id"]
        r = client.get(f"/scenes/{scene_id}/complete-the-look", params={"category": category})
        assert r.status_code == 200, r.text


def test_an_index_reload_between_upload_and_get_answers_from_the_new_version(
    stl_dir: Path, tmp_path: Path
) -> None:
    artifacts = copy_artifacts(stl_dir, tmp_path)
    store = IndexStore.for_artifacts(artifacts)
    with serve(settings_for(artifacts, stl_dir)) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        scene_id = upload(client, scene(stl_dir, 74)).json()["scene_id"]
        path = f"/scenes/{scene_id}/complete-the-look"
        before = client.get(path, params={"category": category, "k": 5}).json()
        victim = before["products"][0]["id"]
        remove_products(store, OnnxEncoder.from_artifacts(artifacts, device="cpu"), [victim])
        assert client.post("/admin/reload", headers=admin_headers()).status_code == 200
        after = client.get(path, params={"category": category, "k": 5})
        assert after.status_code == 200, after.text
        assert after.json()["index_version"] == store.current() != before["index_version"]
        assert victim not in [p["id"] for p in after.json()["products"]]


class RenamedEncoder:
    """The real encoder under another model version (as after a retrained model's export)."""

    def __init__(self, inner: OnnxEncoder, version: str) -> None:
        self._inner, self.version = inner, version
        self.categories, self.dim = inner.categories, inner.dim
        self.providers, self.lanes, self.input_size = inner.providers, inner.lanes, inner.input_size
        self.precision = inner.precision
        self.calls = 0

    def prepare(self, image: Image.Image) -> Image.Image:
        return self._inner.prepare(image)

    def embed_scenes(self, images: Sequence[Image.Image]) -> list[SceneEmbedding]:
        self.calls += 1
        return self._inner.embed_scenes(images)

    def embed_products(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self._inner.embed_products(images)


def test_a_model_reload_between_upload_and_get_is_a_clean_404(stl_dir: Path) -> None:
    loads: list[str] = []

    def encoder_loader(settings: Settings) -> Encoder:
        inner = OnnxEncoder.from_artifacts(settings.artifacts_dir, device="cpu")
        loads.append(f"{inner.version}-{len(loads)}")
        return RenamedEncoder(inner, loads[-1])

    def catalog_loader(settings: Settings) -> Any:
        catalog = IndexStore.for_artifacts(settings.artifacts_dir).load()
        catalog.model_version = f"{catalog.model_version}-{len(loads) - 1}"
        return catalog

    settings = settings_for(tiny_artifacts(stl_dir), stl_dir)
    with serve(settings, encoder_loader=encoder_loader, catalog_loader=catalog_loader) as client:
        category = client.get("/categories").json()["categories"][0]["name"]
        scene_id = upload(client, scene(stl_dir, 75)).json()["scene_id"]
        path = f"/scenes/{scene_id}/complete-the-look"
        assert client.get(path, params={"category": category}).status_code == 200
        assert client.post("/admin/reload", headers=admin_headers()).status_code == 200
        r = client.get(path, params={"category": category})
        assert r.status_code == 404 and "upload the photo again" in r.json()["detail"], r.text
        assert client.get("/readyz").json()["model_version"] == loads[-1]


def counting_loader(settings: Settings) -> Encoder:
    inner = OnnxEncoder.from_artifacts(settings.artifacts_dir, device="cpu")
    return RenamedEncoder(inner, inner.version)


@pytest.mark.parametrize("cache_size", [0, 2048])
def test_explain_encodes_the_scene_once(stl_dir: Path, cache_size: int) -> None:
    """explain=true uses the embedding the request computed, even with no cache to keep it."""
    settings = settings_for(tiny_artifacts(stl_dir), stl_dir, cache_size=cache_size)
    with serve(settings, encoder_loader=counting_loader) as client:
        encoder = client.app.state.manager.current.encoder
        category = client.get("/categories").json()["categories"][0]["name"]
        before = encoder.calls
        r = post_scene(client, scene(stl_dir, 76), category, explain="true")
        assert r.status_code == 200 and r.json()["attention"], r.text
        assert encoder.calls == before + 1


def test_a_stored_scene_is_answered_without_the_encoder(stl_dir: Path) -> None:
    settings = settings_for(tiny_artifacts(stl_dir), stl_dir)
    with serve(settings, encoder_loader=counting_loader) as client:
        encoder = client.app.state.manager.current.encoder
        names = [c["name"] for c in client.get("/categories").json()["categories"]]
        scene_id = upload(client, scene(stl_dir, 77)).json()["scene_id"]
        after_upload = encoder.calls
        for name in names:
            params = {"category": name, "explain": "true"}
            r = client.get(f"/scenes/{scene_id}/complete-the-look", params=params)
            assert r.status_code == 200 and r.json()["attention"], r.text
        assert encoder.calls == after_upload


def test_the_category_is_resolved_once_per_request(
    client: TestClient, stl_dir: Path, categories: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    resolve = Serving.category_index

    def counted(self: Serving, category: str) -> int:
        calls.append(category)
        return resolve(self, category)

    monkeypatch.setattr(Serving, "category_index", counted)
    r = post_scene(client, scene(stl_dir, 78), categories[0], explain="true")
    assert r.status_code == 200, r.text
    assert calls == [categories[0]]


def test_openapi_version_examples_have_the_real_formats(client: TestClient) -> None:
    """The documented examples look like the versions the service really reports."""
    import re

    ready = client.get("/openapi.json").json()["components"]["schemas"]["Ready"]["properties"]
    served = client.get("/readyz").json()
    for name in ("model_version", "index_version"):
        example = ready[name]["examples"][0]
        shape = re.sub(r"[0-9a-f]", "h", served[name])
        assert re.sub(r"[0-9a-f]", "h", example) == shape, (name, example, served[name])


def test_without_a_cache_scenes_are_refused_with_a_reason(stl_dir: Path) -> None:
    settings = settings_for(tiny_artifacts(stl_dir), stl_dir, cache_size=0)
    with serve(settings) as client:
        r = upload(client, scene(stl_dir, 79))
        assert r.status_code == 501, r.text
        assert "POST /complete-the-look" in r.json()["detail"]
