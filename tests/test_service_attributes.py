"""Product attributes and filters through the HTTP app: PATCH, every recommending route's
filter, the cache never serving a stock change stale, `ctl catalog set` followed live, bad input."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from service_support import (
    admin_headers,
    copy_artifacts,
    post_scene,
    scene,
    serve,
    settings_for,
)

from cli import main as ctl

K = 3


@pytest.fixture
def client(stl_dir: Path, tmp_path: Path) -> TestClient:
    artifacts = copy_artifacts(stl_dir, tmp_path)
    with serve(settings_for(artifacts, stl_dir, follow_interval_s=0.2)) as c:
        yield c  # type: ignore[misc]


def _category(client: TestClient) -> str:
    return str(client.get("/categories").json()["categories"][0]["name"])


def _patch(client: TestClient, pid: str, body: object) -> object:
    return client.patch(f"/admin/products/{pid}", json=body, headers=admin_headers())


def _ids(answer: dict) -> list[str]:
    return [p["id"] for p in answer["products"]]


def test_patch_sets_attributes_shown_in_every_product_answer(client: TestClient) -> None:
    category = _category(client)
    photo = scene(client.app.state.settings.data_dir)  # type: ignore[attr-defined]
    top = _ids(post_scene(client, photo, category, k=K).json())
    pid = top[0]
    body = {
        "title": "Red boot",
        "price": 49.9,
        "currency": "EUR",
        "url": "https://shop.example/red-boot",
        "brand": "acme",
        "popularity": 12,
        "attributes": {"color": "red", "size": 42, "vegan": True},
    }
    r = _patch(client, pid, body)
    assert r.status_code == 200, r.text  # type: ignore[attr-defined]
    got = r.json()  # type: ignore[attr-defined]
    assert got["title"] == "Red boot" and got["in_stock"] is True and got["price"] == 49.9
    product = client.get(f"/products/{pid}").json()
    assert {k: product[k] for k in body} == {**body, "popularity": 12.0}
    answer = post_scene(client, photo, category, k=K).json()
    first = answer["products"][0]
    assert first["id"] == pid and first["title"] == "Red boot" and first["brand"] == "acme"
    similar = client.get(f"/products/{top[1]}/similar", params={"k": 4}).json()
    shown = {p["id"]: p for p in similar["products"]}
    assert shown[pid]["attributes"] == {"color": "red", "size": 42, "vegan": True}
    # Merging: one key changed, one removed, a field reset to its default.
    r = _patch(client, pid, {"attributes": {"size": 43, "vegan": None}, "title": None})
    assert r.json()["attributes"] == {"color": "red", "size": 43}  # type: ignore[attr-defined]
    assert r.json()["title"] is None  # type: ignore[attr-defined]
    assert client.get(f"/products/{pid}").json()["title"] is None


def test_openapi_declares_the_attributes(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("Recommended", "SimilarProduct", "ProductInfo"):
        props = schemas[name]["properties"]
        for field in ("title", "price", "currency", "url", "brand", "in_stock", "popularity"):
            assert field in props, (name, field)
        assert "attributes" in props
    patch = client.get("/openapi.json").json()["paths"]["/admin/products/{product_id}"]["patch"]
    assert "requestBody" in patch


def test_a_stock_flip_is_never_served_from_the_cache(client: TestClient) -> None:
    category = _category(client)
    photo = scene(client.app.state.settings.data_dir)  # type: ignore[attr-defined]
    first = post_scene(client, photo, category, k=K).json()
    again = post_scene(client, photo, category, k=K).json()
    assert again["cached"] and _ids(again) == _ids(first)
    out = _ids(first)[0]
    assert _patch(client, out, {"in_stock": False}).status_code == 200  # type: ignore[attr-defined]
    after = post_scene(client, photo, category, k=K).json()
    assert not after["cached"]
    assert out not in _ids(after) and len(after["products"]) == K
    assert _ids(after)[:2] == _ids(first)[1:]
    # Asking for out-of-stock products too: it is back, marked.
    everything = post_scene(
        client, photo, category, k=K, filter=json.dumps({"in_stock_only": False})
    ).json()
    assert _ids(everything) == _ids(first)
    assert everything["products"][0]["in_stock"] is False
    assert _patch(client, out, {"in_stock": True}).status_code == 200  # type: ignore[attr-defined]
    assert _ids(post_scene(client, photo, category, k=K).json()) == _ids(first)


def test_filters_on_every_recommending_route(client: TestClient) -> None:
    category = _category(client)
    photo = scene(client.app.state.settings.data_dir)  # type: ignore[attr-defined]
    ranked = _ids(post_scene(client, photo, category, k=5).json())
    for n, pid in enumerate(ranked):
        body = {"brand": "acme" if n % 2 else "zeta", "price": 10.0 * (n + 1)}
        assert _patch(client, pid, body).status_code == 200  # type: ignore[attr-defined]
    acme = [p for n, p in enumerate(ranked) if n % 2]
    flt = json.dumps({"brand": ["acme"]})
    assert _ids(post_scene(client, photo, category, k=K, filter=flt).json()) == acme
    cheap = json.dumps({"price_max": 30, "exclude": [ranked[0]]})
    assert _ids(post_scene(client, photo, category, k=K, filter=cheap).json()) == ranked[1:3]

    files = {"image": ("s.jpg", photo, "image/jpeg")}
    r = client.post(
        "/complete-the-look/all",
        files=files,
        data={"k": str(K), "filter": flt, "categories": category},
    )
    assert [p["id"] for p in r.json()["results"][category]] == acme
    scene_id = client.post("/scenes", files=files).json()["scene_id"]
    r = client.get(
        f"/scenes/{scene_id}/complete-the-look",
        params={"category": category, "k": K, "filter": cheap},
    )
    assert _ids(r.json()) == ranked[1:3]
    r = client.get(
        f"/scenes/{scene_id}/complete-the-look/all",
        params={"categories": category, "k": K, "filter": flt},
    )
    assert [p["id"] for p in r.json()["results"][category]] == acme
    r = client.post(
        "/batch/complete-the-look",
        files=[("images", ("a.jpg", photo, "image/jpeg"))],
        data={"k": str(K), "filter": flt, "categories": json.dumps([category])},
    )
    assert [p["id"] for p in r.json()["items"][0]["results"][category]] == acme
    r = client.get(f"/products/{ranked[0]}/similar", params={"k": K, "filter": flt})
    assert {p["id"] for p in r.json()["products"]} <= set(acme)
    assert len(r.json()["products"]) == len(acme)
    product_photo = client.get(f"/products/{ranked[0]}/image").content
    r = client.post(
        "/similar",
        files={"image": ("p.jpg", product_photo, "image/jpeg")},
        data={"category": category, "k": str(K), "filter": json.dumps({"brand": "zeta"})},
    )
    assert {p["id"] for p in r.json()["products"]} == {p for p in ranked if p not in acme}


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"colour": ["red"]}, "valid keys: in_stock_only, exclude, brand, attributes"),
        ({"price_min": 50, "price_max": 10}, "price_min (50.0) > price_max (10.0)"),
        ("not json", "not valid JSON"),
    ],
)
def test_bad_filters_are_422_naming_the_problem(
    client: TestClient, flt: object, message: str
) -> None:
    photo = scene(client.app.state.settings.data_dir)  # type: ignore[attr-defined]
    raw = flt if isinstance(flt, str) else json.dumps(flt)
    r = post_scene(client, photo, _category(client), filter=raw)
    assert r.status_code == 422 and message in r.json()["detail"]
    r = client.get("/products/x/similar", params={"filter": raw})
    assert r.status_code in (404, 422)


def test_bad_patches(client: TestClient) -> None:
    pid = client.get("/products/" + _any_product(client)).json()["id"]
    assert _patch(client, "no-such-product", {"in_stock": False}).status_code == 404  # type: ignore[attr-defined]
    r = _patch(client, pid, {"stock": 3})
    assert r.status_code == 422 and "stock" in r.json()["detail"]  # type: ignore[attr-defined]
    r = _patch(client, pid, {"attributes": {f"k{i}": i for i in range(40)}})
    assert r.status_code == 422 and "at most 32" in r.json()["detail"]  # type: ignore[attr-defined]
    r = _patch(client, pid, {"attributes": {"x": "y" * 5000}})
    assert r.status_code == 422  # type: ignore[attr-defined]
    r = _patch(client, pid, {"price": "cheap"})
    assert r.status_code == 422  # type: ignore[attr-defined]
    r = client.patch(f"/admin/products/{pid}", json={"in_stock": False})
    assert r.status_code == 401
    assert client.get(f"/products/{pid}").json()["in_stock"] is True  # nothing changed


def _any_product(client: TestClient) -> str:
    photo = scene(client.app.state.settings.data_dir)  # type: ignore[attr-defined]
    return str(_ids(post_scene(client, photo, _category(client)).json())[0])


def test_concurrent_patches_of_one_product_all_land(client: TestClient) -> None:
    pid = _any_product(client)
    fields = [{"title": "t"}, {"price": 5.0}, {"brand": "b"}, {"attributes": {"a": 1}},
              {"attributes": {"b": 2}}, {"popularity": 3.0}, {"currency": "EUR"}]  # fmt: skip
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda f: _patch(client, pid, f).status_code, fields))  # type: ignore[attr-defined]
    assert codes == [200] * len(fields)
    got = client.get(f"/products/{pid}").json()
    assert (got["title"], got["price"], got["brand"], got["popularity"], got["currency"]) == (
        "t", 5.0, "b", 3.0, "EUR",
    )  # fmt: skip
    assert got["attributes"] == {"a": 1, "b": 2}


def test_ctl_catalog_set_is_followed_by_a_running_service(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = _any_product(client)
    artifacts = str(client.app.state.settings.artifacts_dir)  # type: ignore[attr-defined]
    code = ctl(["catalog", "set", pid, "in_stock=false", "price=19.5", "attributes.color=blue",
                "title=Blue shoe", "--artifacts", artifacts])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["attributes"] == {
        "in_stock": False, "price": 19.5, "attributes": {"color": "blue"}, "title": "Blue shoe"
    }  # fmt: skip
    deadline = time.monotonic() + 5
    while client.get(f"/products/{pid}").json()["in_stock"] is not False:
        assert time.monotonic() < deadline, "the service never followed ctl catalog set"
        time.sleep(0.05)
    assert pid not in _ids(post_scene(client, scene(client.app.state.settings.data_dir),  # type: ignore[attr-defined]
                                      _category(client)).json())  # fmt: skip
    assert ctl(["catalog", "set", "nope", "in_stock=false", "--artifacts", artifacts]) == 1
    assert "no product with id 'nope'" in capsys.readouterr().err
    assert ctl(["catalog", "set", pid, "colour=red", "--artifacts", artifacts]) == 1
    assert "valid fields" in capsys.readouterr().err


def test_cors_is_off_by_default_and_answers_preflights_when_configured(
    stl_dir: Path, tmp_path: Path
) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    artifacts = copy_artifacts(stl_dir, tmp_path)
    with serve(settings_for(artifacts, stl_dir)) as off:
        r = off.options("/complete-the-look", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = off.get("/categories", headers={"Origin": "https://shop.example"})
        assert "access-control-allow-origin" not in r.headers
    settings = settings_for(artifacts, stl_dir, cors_origins=["https://shop.example"])
    with serve(settings) as on:
        r = on.options("/complete-the-look", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        r = on.get("/categories", headers={"Origin": "https://shop.example"})
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
        r = on.options(
            "/complete-the-look", headers={**preflight, "Origin": "https://evil.example"}
        )
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_a_wrong_method_names_every_method_of_the_path(client: TestClient) -> None:
    r = client.put("/admin/products/sku-1", headers=admin_headers())
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, PATCH"
    r = client.delete("/categories")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
