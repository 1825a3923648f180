"""The outside probe's defects of the HTTP service (issue 31), one test each: broken EXIF on
every route that takes a photo, repeated and empty query parameters, echoed values, and the
decompression-bomb message."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from broken_exif import broken_exif_photos
from fastapi.testclient import TestClient
from service_support import admin_headers, copy_artifacts, scene, serve, settings_for

from index.store import IndexStore


@pytest.fixture(scope="module")
def client(stl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service on a private copy of the tiny catalog (the admin route publishes)."""
    artifacts = copy_artifacts(stl_dir, tmp_path_factory.mktemp("probe"))
    with serve(settings_for(artifacts, stl_dir)) as c:
        yield c


@pytest.fixture(scope="module")
def category(client: TestClient) -> str:
    return str(client.get("/categories").json()["categories"][0]["name"])


def _product_id(client: TestClient, category: str) -> str:
    catalog = IndexStore.for_artifacts(client.app.state.settings.artifacts_dir).load()
    return str(catalog.category(category).ids[0])


def _no_5xx(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert re.search(r'ctl_http_requests_total\{[^}]*status="5\d\d"\}', text) is None


@pytest.mark.parametrize("name", sorted(broken_exif_photos()))
def test_a_photo_with_broken_exif_is_answered_on_every_route(
    client: TestClient, category: str, name: str
) -> None:
    data = broken_exif_photos()[name]
    image = {"image": (name, data, "application/octet-stream")}
    one = client.post("/complete-the-look", files=image, data={"category": category, "k": "2"})
    assert one.status_code == 200, one.text
    assert client.post("/complete-the-look/all", files=image).status_code == 200
    stored = client.post("/scenes", files=image)
    assert stored.status_code in (200, 201), stored.text
    scene_id = stored.json()["scene_id"]
    answer = client.get(f"/scenes/{scene_id}/complete-the-look", params={"category": category})
    assert answer.status_code == 200, answer.text
    some = _product_id(client, category)
    score = client.post("/score", files=image, data={"product_ids": [some]})
    assert score.status_code == 200, score.text
    similar = client.post("/similar", files=image, data={"category": category})
    assert similar.status_code == 200, similar.text
    batch = client.post(
        "/batch/complete-the-look",
        files=[("images", (name, data, "image/jpeg")), ("images", ("ok.jpg", data, "image/jpeg"))],
    )
    assert batch.status_code == 200, batch.text
    assert all("results" in item for item in batch.json()["items"]), batch.text
    sku = "exif-" + name.replace(".", "-")
    add = client.post(
        "/admin/products",
        headers=admin_headers(),
        data={"product_id": sku, "category": category},
        files=image,
    )
    assert add.status_code == 200, add.text
    assert add.json()["added"] == [sku]
    _no_5xx(client)


def test_repeated_query_parameters_are_422_as_on_post(client: TestClient, category: str) -> None:
    stored = client.post("/scenes", files={"image": ("s.jpg", broken_exif_photos()["broken.jpg"])})
    scene_id = stored.json()["scene_id"]
    some = client.get(f"/scenes/{scene_id}/complete-the-look/all?k=1").json()
    other = next(c for c in some["results"] if c != category)
    one = f"/scenes/{scene_id}/complete-the-look"
    for url, params in (
        (one, [("category", category), ("category", other)]),
        (one, [("category", category), ("k", "2"), ("k", "3")]),
        (one, [("category", category), ("explain", "1"), ("explain", "0")]),
        (f"{one}/all", [("k", "2"), ("k", "3")]),
    ):
        r = client.get(url, params=params)
        assert r.status_code == 422 and "sent 2 times" in r.json()["detail"], (params, r.text)
    r = client.get(f"/products/{_product_id(client, category)}/similar?k=2&k=3")
    assert r.status_code == 422 and "k: sent 2 times" in r.json()["detail"]


def test_an_out_of_range_k_is_quoted_by_a_short_prefix(
    client: TestClient, stl_dir: Path, category: str
) -> None:
    nines = "9" * 4000
    image = {"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")}
    post = client.post("/complete-the-look", files=image, data={"category": category, "k": nines})
    stored = client.post("/scenes", files=image).json()["scene_id"]
    get = client.get(
        f"/scenes/{stored}/complete-the-look", params={"category": category, "k": nines}
    )
    for r in (post, get):
        assert r.status_code == 422 and "k must be between 1 and 100" in r.json()["detail"]
        assert len(r.content) < 300, len(r.content)


def test_empty_category_and_k_say_they_are_empty(
    client: TestClient, stl_dir: Path, category: str
) -> None:
    image = {"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")}
    for data, field in (({"category": ""}, "category"), ({"category": category, "k": ""}, "k")):
        r = client.post("/complete-the-look", files=image, data=data)
        assert r.status_code == 422 and f"{field}: is empty" in r.json()["detail"], r.text
    stored = client.post("/scenes", files=image).json()["scene_id"]
    for params, field in (({"category": ""}, "category"), ({"category": category, "k": ""}, "k")):
        r = client.get(f"/scenes/{stored}/complete-the-look", params=params)
        assert r.status_code == 422 and f"{field}: is empty" in r.json()["detail"], r.text


def test_the_decompression_bomb_message_quotes_one_limit(client: TestClient, category: str) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    bomb = b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    r = client.post(
        "/complete-the-look", files={"image": ("b.png", bomb)}, data={"category": category}
    )
    assert r.status_code == 413
    limits = {int(n) for n in re.findall(r"\d{6,}", r.json()["detail"])}
    assert limits == {client.app.state.settings.max_image_pixels}, r.json()["detail"]
