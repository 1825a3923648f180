"""The API through TestClient with the lifespan on, over a tiny real model and catalog."""

from __future__ import annotations

import gc
import io
import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import TypeAdapter
from service_support import (
    PER_CATEGORY,
    encode,
    post_scene,
    scene,
    serve,
    settings_for,
    tiny_artifacts,
)

from index.attributes import CatalogAttributes
from index.search import Scored
from index.store import IndexStore
from runtime.encoder import OnnxEncoder
from service.app import STATIC_DIR, create_app
from service.images import Upload, decode_upload
from service.recommender import products_json
from service.schemas import BatchResponse, CompleteTheLook, CompleteTheLookAll, Recommended


@pytest.fixture(scope="module")
def artifacts(stl_dir: Path) -> Path:
    return tiny_artifacts(stl_dir)


@pytest.fixture(scope="module")
def client(artifacts: Path, stl_dir: Path) -> Iterator[TestClient]:
    with serve(settings_for(artifacts, stl_dir)) as c:
        yield c


@pytest.fixture(scope="module")
def categories(client: TestClient) -> list[str]:
    return [c["name"] for c in client.get("/categories").json()["categories"]]


def _server_errors(client: TestClient) -> float:
    """Requests answered with a 5xx so far."""
    text = client.get("/metrics").text
    found = re.findall(r'^ctl_http_requests_total\{[^}]*status="5\d\d"[^}]*\} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


@pytest.fixture(autouse=True)
def no_server_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that uses the shared client, bad inputs included, gets no 5xx (checked after
    each test, so that no test has to run last)."""
    if "client" not in request.fixturenames:
        yield
        return
    client: TestClient = request.getfixturevalue("client")
    before = _server_errors(client)
    yield
    assert _server_errors(client) == before, "a request was answered with a 5xx"


def _metric(client: TestClient, name: str, **labels: str) -> float:
    """The value of one series in /metrics (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_categories_and_readiness(
    client: TestClient, artifacts: Path, categories: list[str]
) -> None:
    body = client.get("/categories").json()
    assert categories and all(c["count"] == PER_CATEGORY for c in body["categories"])
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert "CPUExecutionProvider" in ready["providers"]
    assert ready["faiss_device"] == "cpu" and ready["cache"] == "memory"
    assert ready["warnings"] == [], "CPU builds on a CPU machine: nothing to warn of"
    assert ready["index_version"] == IndexStore.for_artifacts(artifacts).current()
    assert ready["precision"] == "fp32" and ready["model_version"].endswith("-fp32")
    assert client.get("/healthz").json() == {"status": "ok"}


def test_complete_the_look_matches_exhaustive_d_star(
    client: TestClient, artifacts: Path, stl_dir: Path, categories: list[str]
) -> None:
    """The ranking is the exact d* ranking over every product of the category."""
    category = categories[0]
    data = scene(stl_dir, 0)
    r = post_scene(client, data, category, k=PER_CATEGORY)
    assert r.status_code == 200, r.text
    body = r.json()
    got = [p["id"] for p in body["products"]]
    assert [p["rank"] for p in body["products"]] == list(range(1, PER_CATEGORY + 1))
    for p in body["products"]:
        assert p["category"] == category
        assert p["d_star"] == pytest.approx((p["d_global"] + p["d_local"]) / 2, abs=1e-5)

    encoder = OnnxEncoder.from_artifacts(artifacts, device="cpu")
    catalog = IndexStore.for_artifacts(artifacts).load()
    # Decoded as the service decodes it (a photo twice the model input or more at reduced scale).
    photo = decode_upload(Upload("s.jpg", data, sha256=""), 10**8, encoder.input_size)
    emb = encoder.embed_scenes([photo])[0]
    ids = catalog.category(category).ids
    f_p = catalog.embeddings(ids).astype(np.float64)
    att = emb.attention[encoder.categories.index(category)].astype(np.float64)
    d_global = ((f_p - emb.f_s) ** 2).sum(1)
    d_local = (att[None, :] * ((emb.f_i[None] - f_p[:, None]) ** 2).sum(-1)).sum(1)
    d_star = (d_global + d_local) / 2
    assert got == [ids[i] for i in np.argsort(d_star, kind="stable")]
    assert [p["d_star"] for p in body["products"]] == pytest.approx(sorted(d_star), abs=1e-4)


def test_second_request_is_cached_and_other_k_reuses_the_embedding(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    data = scene(stl_dir, 1)
    calls = _metric(client, "ctl_encoder_batch_size_count")
    first = post_scene(client, data, categories[0], k=2).json()
    again = post_scene(client, data, categories[0], k=2).json()
    other_k = post_scene(client, data, categories[0], k=4).json()
    other_cat = post_scene(client, data, categories[1], k=2).json()
    assert (first["cached"], again["cached"], other_k["cached"]) == (False, True, False)
    assert again["products"] == first["products"]
    # Another k re-scores a different candidate matrix: the same answer up to float rounding.
    assert [p["id"] for p in other_k["products"][:2]] == [p["id"] for p in first["products"]]
    assert [p["d_star"] for p in other_k["products"][:2]] == pytest.approx(
        [p["d_star"] for p in first["products"]], abs=1e-9
    )
    assert other_cat["products"][0]["category"] == categories[1]
    assert _metric(client, "ctl_encoder_batch_size_count") == calls + 1, "scene embedded twice"
    assert _metric(client, "ctl_cache_hits_total", kind="result") >= 1
    assert _metric(client, "ctl_cache_hits_total", kind="embedding") >= 2


def test_explain_returns_a_normalized_grid(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    body = post_scene(client, scene(stl_dir, 2), categories[0], explain="true").json()
    grid = np.asarray(body["attention"])
    assert grid.shape == (7, 7)
    assert grid.min() >= 0 and grid.sum() == pytest.approx(1.0, abs=1e-4)
    assert post_scene(client, scene(stl_dir, 2), categories[0]).json()["attention"] is None


def test_recommend_responses_match_their_documented_models(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    """These routes send their JSON without FastAPI's re-validation: check it here, strictly."""
    one = post_scene(client, scene(stl_dir, 4), categories[0], explain="true").json()
    assert CompleteTheLook.model_validate(one, strict=True).products
    assert set(one) == set(CompleteTheLook.model_fields)
    assert set(one["products"][0]) == set(Recommended.model_fields)
    every = client.post(
        "/complete-the-look/all",
        files={"image": ("s.jpg", scene(stl_dir, 4), "image/jpeg")},
        data={"k": "3"},
    ).json()
    assert set(CompleteTheLookAll.model_validate(every, strict=True).results) == set(categories)
    assert set(every) == set(CompleteTheLookAll.model_fields)


def test_recommend_answers_are_the_bytes_fastapi_would_send(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    """The JSON written by service/answers.py is byte for byte the response model's (what
    FastAPI sends for a returned dict: validated, then dumped by pydantic), misses and hits."""
    image = {"image": ("s.jpg", scene(stl_dir, 9), "image/jpeg")}
    stored = client.post("/scenes", files=image).json()["scene_id"]
    batch = [("images", ("a.jpg", scene(stl_dir, 9), "image/jpeg"))]
    batch.append(("images", ("b\u00e9.txt", b"not an image", "text/plain")))
    for _ in range(2):  # a miss, then a hit
        for model, r in (
            (CompleteTheLook, post_scene(client, scene(stl_dir, 9), categories[0], explain="1")),
            (CompleteTheLookAll, client.post("/complete-the-look/all", files=image)),
            (
                CompleteTheLook,
                client.get(
                    f"/scenes/{stored}/complete-the-look", params={"category": categories[1]}
                ),
            ),
            (CompleteTheLookAll, client.get(f"/scenes/{stored}/complete-the-look/all?k=2")),
            (BatchResponse, client.post("/batch/complete-the-look", files=batch)),
        ):
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/json"
            assert model.model_validate_json(r.content).model_dump_json().encode() == r.content


def test_products_json_is_the_response_models_json() -> None:
    """Products with every kind of attribute, written as list[Recommended] would be."""
    records: dict[str, dict[str, object]] = {
        "a": {
            "title": 'Stiefel "\u00e9t\u00e9" \u2603',
            "price": 49.9,
            "currency": "EUR",
            "url": "https://x.example/p?a=1&b=2",
            "brand": "acme",
            "popularity": 3.0,
            "attributes": {"color": "red", "size": 42, "eco": True, "ratio": 0.1},
        },
        "b": {"in_stock": False, "price": 5.0},
    }
    attributes = CatalogAttributes.build(7, records, {"Shoes": ["a", "b", "c"]}, lambda _: None)
    ranked = [Scored(pid, "Shoes", 0.1 * n, 1e-7 * n, 2.0 / 3 + n) for n, pid in enumerate("abc")]
    expected = [
        {
            "id": r.id,
            "category": r.category,
            "rank": rank,
            "d_star": r.d_star,
            "d_global": r.d_global,
            "d_local": r.d_local,
            "image_url": f"/products/{r.id}/image",
            **records.get(r.id, {}),
        }
        for rank, r in enumerate(ranked, start=1)
    ]
    adapter = TypeAdapter(list[Recommended])
    assert products_json(ranked, attributes) == adapter.dump_json(adapter.validate_python(expected))


def test_all_categories_from_one_encoder_pass(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    calls = _metric(client, "ctl_encoder_batch_size_count")
    r = client.post(
        "/complete-the-look/all",
        files={"image": ("s.jpg", scene(stl_dir, 3), "image/jpeg")},
        data={"k": "2"},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert list(results) == categories
    assert all(len(v) == 2 and v[0]["category"] == c for c, v in results.items())
    assert _metric(client, "ctl_encoder_batch_size_count") == calls + 1
    two = categories[-2:]
    r = client.post(
        "/complete-the-look/all",
        files={"image": ("s.jpg", scene(stl_dir, 3), "image/jpeg")},
        data={"k": "2", "categories": two},
    )
    assert list(r.json()["results"]) == two and r.json()["cached"] is True


def test_score_reports_unknown_ids(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    data = scene(stl_dir, 4)
    top = post_scene(client, data, categories[0], k=2).json()["products"]
    ids = [top[1]["id"], "no-such-product", top[0]["id"]]
    r = client.post(
        "/score", files={"image": ("s.jpg", data, "image/jpeg")}, data={"product_ids": ids}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["id"] for s in body["scores"]] == [top[1]["id"], top[0]["id"]]
    assert body["unknown_ids"] == ["no-such-product"]
    assert body["scores"][1]["d_star"] == pytest.approx(top[0]["d_star"], abs=1e-5)


def test_batch_isolates_bad_items(client: TestClient, stl_dir: Path, categories: list[str]) -> None:
    files = [
        ("images", ("a.jpg", scene(stl_dir, 5), "image/jpeg")),
        ("images", ("notes.txt", b"not an image at all", "text/plain")),
        ("images", ("b.jpg", scene(stl_dir, 6), "image/jpeg")),
        ("images", ("c.jpg", scene(stl_dir, 7), "image/jpeg")),
    ]
    per_image = [[categories[0]], [categories[0]], [categories[1], categories[0]], ["Hats"]]
    r = client.post(
        "/batch/complete-the-look",
        files=files,
        data={"categories": json.dumps(per_image), "k": "2"},
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [i["index"] for i in items] == [0, 1, 2, 3]
    assert list(items[0]["results"]) == [categories[0]] and items[0]["error"] is None
    assert items[1]["error"]["status"] == 415 and "notes.txt" in items[1]["error"]["detail"]
    assert list(items[2]["results"]) == [categories[1], categories[0]]
    assert items[3]["error"]["status"] == 422 and categories[0] in items[3]["error"]["detail"]


def test_products_images_and_similar(
    client: TestClient, artifacts: Path, categories: list[str]
) -> None:
    catalog = IndexStore.for_artifacts(artifacts).load()
    pid = catalog.category(categories[0]).ids[0]
    assert client.get(f"/products/{pid}").json()["category"] == categories[0]
    image = client.get(f"/products/{pid}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == catalog.product(pid).image.read_bytes()  # type: ignore[union-attr]

    similar = client.get(f"/products/{pid}/similar", params={"k": 3}).json()["products"]
    assert len(similar) == 3 and pid not in [p["id"] for p in similar]
    assert all(p["category"] == categories[0] for p in similar)
    assert [p["distance"] for p in similar] == sorted(p["distance"] for p in similar)

    r = client.post(
        "/similar",
        files={"image": ("p.jpg", image.content, "image/jpeg")},
        data={"category": categories[0], "k": "2"},
    )
    assert r.status_code == 200, r.text
    first = r.json()["products"][0]
    assert first["id"] == pid and first["distance"] == pytest.approx(0.0, abs=1e-4)


def test_samples_and_traversal(client: TestClient, stl_dir: Path) -> None:
    samples = client.get("/samples").json()
    assert len(samples) == 3
    got = client.get(samples[0]["url"])
    assert got.status_code == 200
    assert got.content == (stl_dir / "images" / "scenes" / samples[0]["name"]).read_bytes()
    for evil in ("..%2F..%2Fpyproject.toml", "%2Fetc%2Fpasswd", "..%5Cx.jpg", "nope.jpg"):
        assert client.get(f"/samples/{evil}").status_code == 404


@pytest.mark.skipif(not (STATIC_DIR / "index.html").is_file(), reason="no web page in service/")
def test_page_is_served_without_shadowing_the_api(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/categories").headers["content-type"] == "application/json"


def test_metrics_exposition_format(client: TestClient) -> None:
    client.get("/categories")
    client.get("/healthz")
    text = client.get("/metrics").text
    sample = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)+\})? -?[0-9.e+Inf-]+$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), line
    assert 'ctl_http_requests_total{endpoint="/categories",method="GET",status="200"}' in text
    info = r'^ctl_serving_info\{index_version="[^"]+",model_version="[^"]+"\} 1\.0$'
    assert re.search(info, text, re.M)
    assert "process_cpu_seconds_total" in text, "prometheus_client's process metrics"
    assert 'ctl_http_request_duration_seconds_bucket{endpoint="/healthz"' in text


# ------------------------------------------------------------------ bad input


def _bomb() -> bytes:
    """A small PNG whose header claims 25 megapixels (over the 4 MP test limit)."""
    return encode(Image.new("1", (5000, 5000)), "PNG", optimize=True)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few dozen bytes (a bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b""))
    return b"\x89PNG\r\n\x1a\n" + ihdr + idat + chunk(b"IEND", b"")


def _truncated(stl_dir: Path) -> bytes:
    data = scene(stl_dir, 0)
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "text": (lambda d: b"hello, I am a text file", 415, "not an image"),
    "gif": (lambda d: encode(Image.new("RGB", (8, 8)), "GIF"), 415, "unsupported image format GIF"),
    "empty": (lambda d: b"", 422, "empty"),
    "truncated": (_truncated, 422, "truncated"),
    "too many pixels": (lambda d: _bomb(), 413, "pixels"),
    "decompression bomb": (lambda d: _png_header_only(100_000, 100_000), 413, "bomb"),
    "too many bytes": (lambda d: b"\xff" * 2_000_001, 413, "larger than the limit"),
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_bad_uploads_are_4xx_naming_the_problem(
    client: TestClient, stl_dir: Path, categories: list[str], kind: str
) -> None:
    make, status, words = BAD_UPLOADS[kind]
    r = post_scene(client, make(stl_dir), categories[0])
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_png_and_webp_are_accepted(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    image = Image.open(io.BytesIO(scene(stl_dir, 8)))
    for fmt in ("PNG", "WEBP"):
        assert post_scene(client, encode(image, fmt), categories[0]).status_code == 200


def test_streamed_body_over_the_limit_is_413_without_content_length(
    client: TestClient, categories: list[str]
) -> None:
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="category"\r\n\r\n{categories[0]}'
        f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):  # 2.6 MB in 64 KiB chunks, no Content-Length
            yield b"\0" * 65536

    r = client.post(
        "/complete-the-look",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413 and "limit" in r.json()["detail"]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"category": "Hats"}, "valid categories"),
        ({"k": "0"}, "k must be between 1 and 100"),
        ({"k": "101"}, "k must be between 1 and 100"),
        ({"k": "ten"}, "valid integer"),
        ({"explain": "perhaps"}, "valid boolean"),
    ],
)
def test_bad_fields_are_422(
    client: TestClient, stl_dir: Path, categories: list[str], fields: dict[str, str], words: str
) -> None:
    data = {"category": categories[0], "k": "3", **fields}
    r = client.post(
        "/complete-the-look", files={"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")}, data=data
    )
    assert r.status_code == 422
    assert words in r.text
    if fields.get("category") == "Hats":
        assert all(c in r.json()["detail"] for c in categories)


def test_missing_fields_are_422(client: TestClient, stl_dir: Path, categories: list[str]) -> None:
    no_image = client.post("/complete-the-look", data={"category": categories[0]})
    assert no_image.status_code == 422 and "image" in no_image.text
    no_category = client.post(
        "/complete-the-look", files={"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")}
    )
    assert no_category.status_code == 422 and "category" in no_category.text
    assert client.post("/complete-the-look", content=b"{}").status_code == 422
    no_ids = client.post("/score", files={"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")})
    assert no_ids.status_code == 422 and "product_ids" in no_ids.text


def test_bad_batches(client: TestClient, stl_dir: Path) -> None:
    one = [("images", ("a.jpg", scene(stl_dir, 0), "image/jpeg"))]
    bad_json = client.post("/batch/complete-the-look", files=one, data={"categories": "[oops"})
    assert bad_json.status_code == 422 and "not valid JSON" in bad_json.text
    wrong_len = client.post(
        "/batch/complete-the-look", files=one, data={"categories": '[["Shoes"], ["Pants"]]'}
    )
    assert wrong_len.status_code == 422 and "2 lists but 1 images" in wrong_len.text
    wrong_type = client.post("/batch/complete-the-look", files=one, data={"categories": "{}"})
    assert wrong_type.status_code == 422
    too_many = client.post("/batch/complete-the-look", files=one * 33)
    assert too_many.status_code == 413 and "limit is 32" in too_many.text


def test_unknown_product_is_404(client: TestClient) -> None:
    for path in ("/products/nope", "/products/nope/image", "/products/nope/similar"):
        r = client.get(path)
        assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_before_the_first_load_routes_that_need_the_model_are_503(
    artifacts: Path, stl_dir: Path
) -> None:
    """Without the lifespan (nothing loaded, no serving unit held), a clean 503, not a 500."""
    client = TestClient(create_app(settings_for(artifacts, stl_dir)))  # no `with`: no lifespan
    scene_id = "0" * 64
    for path in ("/categories", "/readyz", f"/scenes/{scene_id}/complete-the-look?category=x"):
        r = client.get(path)
        assert r.status_code == 503, (path, r.text)
        assert r.json()["detail"] == "model and index are not loaded"


def test_startup_freezes_the_loaded_objects_out_of_gc(artifacts: Path, stl_dir: Path) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with serve(settings_for(artifacts, stl_dir)) as c:
        assert c.get("/readyz").status_code == 200
        assert gc.get_freeze_count() > 0


# ------------------------------------------------------------------ the outside probe (issue 20)


def test_deeply_nested_categories_are_422_not_500(client: TestClient, stl_dir: Path) -> None:
    one = [("images", ("a.jpg", scene(stl_dir, 0), "image/jpeg"))]
    for depth in (1_000, 100_000):
        r = client.post(
            "/batch/complete-the-look", files=one, data={"categories": "[" * depth + "]" * depth}
        )
        assert r.status_code == 422 and "nested too deeply" in r.json()["detail"], r.text[:200]


def _mpo(stl_dir: Path) -> bytes:
    """A multi-picture JPEG as phones and cameras write it (two frames)."""
    first = Image.open(io.BytesIO(scene(stl_dir, 3)))
    second = first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second])
    return buf.getvalue()


def test_mpo_photos_are_decoded_as_their_first_jpeg_frame(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    data = _mpo(stl_dir)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode_upload(Upload("m.jpg", data, "x"), 40_000_000)
    assert decoded.size == Image.open(io.BytesIO(scene(stl_dir, 3))).size
    assert post_scene(client, data, categories[0]).status_code == 200  # the fast lane
    r = client.post(  # FastAPI's route (a field the fast lane leaves to it)
        "/complete-the-look/all",
        files={"image": ("m.jpg", data, "image/jpeg")},
        data={"categories": categories[0], "k": "2"},
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("OPTIONS", "/complete-the-look"),
        ("PUT", "/complete-the-look"),
        ("GET", "/complete-the-look"),
        ("GET", "/batch/complete-the-look"),
        ("DELETE", "/score"),
        ("POST", "/categories"),
    ],
)
def test_wrong_methods_on_api_routes_are_405_naming_the_allowed_ones(
    client: TestClient, method: str, path: str
) -> None:
    r = client.request(method, path)
    assert r.status_code == 405, (r.status_code, r.headers)
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert allowed == ({"GET"} if path == "/categories" else {"POST"})
    assert "detail" in r.json()


def test_the_page_and_unknown_paths_still_answer(client: TestClient) -> None:
    if (STATIC_DIR / "index.html").is_file():
        assert client.get("/").status_code == 200
    assert client.get("/no-such-page").status_code == 404
    assert client.post("/no-such-page").status_code == 404


def test_repeated_fields_are_422_not_last_one_wins(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    a, b = scene(stl_dir, 0), scene(stl_dir, 1)
    two = [("image", ("a.jpg", a, "image/jpeg")), ("image", ("b.jpg", b, "image/jpeg"))]
    for path, data in (
        ("/complete-the-look", {"category": categories[0]}),
        ("/complete-the-look/all", {}),
        ("/similar", {"category": categories[0]}),
        ("/score", {"product_ids": "x"}),
    ):
        r = client.post(path, files=two, data=data)
        assert r.status_code == 422 and "image: sent 2 times" in r.json()["detail"], (path, r.text)
    one = [("image", ("a.jpg", a, "image/jpeg"))]
    form = [("category", categories[0]), ("category", categories[-1])]
    r = client.post("/complete-the-look", files=one + [("category", (None, c)) for _, c in form])
    assert r.status_code == 422 and "category: sent 2 times" in r.json()["detail"]


def test_bad_values_are_quoted_by_a_bounded_prefix(
    client: TestClient, stl_dir: Path, categories: list[str]
) -> None:
    huge = "Z" * 1_000_000
    image = {"image": ("s.jpg", scene(stl_dir, 0), "image/jpeg")}
    for path, data in (
        ("/complete-the-look", {"category": huge}),
        ("/complete-the-look/all", {"categories": huge}),
        ("/similar", {"category": huge}),
        ("/score", {"product_ids": huge}),
    ):
        r = client.post(path, files=image, data=data)
        assert r.status_code == 422, (path, r.status_code)
        assert len(r.content) < 5_000, (path, len(r.content))
    batch = client.post(
        "/batch/complete-the-look",
        files=[("images", ("s.jpg", scene(stl_dir, 0), "image/jpeg"))],
        data={"categories": json.dumps([huge])},
    )
    assert batch.status_code == 200 and len(batch.content) < 5_000
    assert batch.json()["items"][0]["error"]["status"] == 422
    r = client.get("/products/" + "Q" * 20_000)
    assert r.status_code == 404 and len(r.content) < 1_000


def test_openapi_tells_the_truth_about_errors_and_limits(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ErrorBody" in components
    for path, item in schema["paths"].items():
        for method, op in item.items():
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, code)
            body = op.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in body:
                assert "400" in op["responses"], (method, path)
                form = body["multipart/form-data"]["schema"]
                props = components[form["$ref"].rsplit("/", 1)[1]]["properties"]
                if "k" in props:
                    assert (props["k"]["minimum"], props["k"]["maximum"]) == (1, 100)
                if "image" in props:  # in a batch, an empty file is one item's error
                    assert props["image"].get("minLength") == 1, (path, props["image"])
                if "images" in props:
                    assert (props["images"]["minItems"], props["images"]["maxItems"]) == (1, 32)
    bad = client.post("/complete-the-look", data={"k": "ten"})
    assert bad.status_code == 422 and isinstance(bad.json()["detail"], str)
    assert "image: Field required" in bad.json()["detail"]
