"""`ctl catalog import` and POST /admin/catalog/import: only new products and changed images
embedded, attributes set, --sync, bad rows with their lines and nothing applied, URL images
fetched with retries, a concurrent PATCH never lost."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest
from factories import QuietHandler, folder_server
from service_support import admin_headers, copy_artifacts, serve, settings_for

from cli import main as ctl
from index import catalog
from index.store import IndexStore


@pytest.fixture
def artifacts(stl_dir: Path, tmp_path: Path) -> Path:
    return copy_artifacts(stl_dir, tmp_path)


def _new_products(stl_dir: Path, artifacts: Path, n: int) -> list[tuple[str, str, Path]]:
    """``n`` products of the data directory that the tiny catalog lacks, in its categories."""
    store = IndexStore.for_artifacts(artifacts)
    have = store.categories_of()
    cats = set(have.values())
    out = []
    for pid, cat in sorted(catalog.read_categories(stl_dir).items()):
        path = catalog.product_path(stl_dir, pid)
        if pid not in have and cat in cats and path.is_file():
            out.append((pid, cat, path))
        if len(out) == n:
            break
    return out


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _import(artifacts: Path, table: Path, *flags: str) -> int:
    return ctl(["catalog", "import", str(table), "--artifacts", str(artifacts), *flags])


def test_import_embeds_only_new_and_changed_images_and_sets_attributes(
    stl_dir: Path, artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = IndexStore.for_artifacts(artifacts)
    before = store.current()
    n_before = len(store.categories_of())
    existing = sorted(store.categories_of().items())[:2]
    (a, cat_a, path_a), (b, cat_b, path_b), (_, _, path_c) = _new_products(stl_dir, artifacts, 3)
    rows: list[dict[str, object]] = [
        {"id": a, "category": cat_a, "image": str(path_a), "price": "49.9", "in_stock": "false",
         "title": "A", "color": "red"},
        {"id": b, "category": cat_b, "image": str(path_b), "price": "", "brand": "acme"},
    ]  # fmt: skip
    for pid, cat in existing:  # already indexed: kept, attributes only
        image = store.image_path(pid)
        rows.append({"id": pid, "category": cat, "image": str(image), "popularity": "7"})
    table = _write_csv(tmp_path / "catalog.csv", rows)
    assert _import(artifacts, table) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["added"], report["reembedded"], report["kept"]) == (2, 0, 2)
    assert report["version"] != before and store.current() == report["version"]
    _, records = store.attributes.read()
    assert records[a] == {"price": 49.9, "in_stock": False, "title": "A",
                          "attributes": {"color": "red"}}  # fmt: skip
    assert records[b] == {"brand": "acme"} and records[existing[0][0]] == {"popularity": 7.0}

    # The same table again: nothing embedded, no new version.
    assert _import(artifacts, table) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["added"], again["reembedded"], again["kept"]) == (0, 0, 4)
    assert again["version"] == report["version"]
    # A changed image: that product alone is embedded again.
    rows[1]["image"] = str(path_c)
    assert _import(artifacts, _write_csv(tmp_path / "catalog.csv", rows)) == 0
    changed = json.loads(capsys.readouterr().out)
    assert (changed["added"], changed["reembedded"], changed["kept"]) == (0, 1, 3)
    loaded = store.load(device="cpu")
    assert loaded.attributes.record(a)["price"] == 49.9

    # --sync: the products the table lacks go; without it nothing is removed.
    assert _import(artifacts, _write_csv(tmp_path / "two.csv", rows[:2]), "--sync") == 0
    synced = json.loads(capsys.readouterr().out)
    assert set(store.categories_of()) == {a, b} and synced["removed"] == n_before


def test_bad_rows_are_reported_with_their_lines_and_nothing_is_applied(
    stl_dir: Path, artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = IndexStore.for_artifacts(artifacts)
    before = store.current()
    (a, cat, path), (b, _, _) = _new_products(stl_dir, artifacts, 2)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not a jpeg at all")
    (tmp_path / "a.jpg").write_bytes(path.read_bytes())
    rows = [
        {"id": a, "category": cat, "image": "a.jpg"},  # line 2, relative to the table
        {"id": b, "category": "Spaceships", "image": "a.jpg"},  # 3
        {"id": "../etc", "category": cat, "image": "a.jpg"},  # 4
        {"id": "c1", "category": cat, "image": str(corrupt)},  # 5
        {"id": "c2", "category": cat, "image": "missing.jpg"},  # 6
        {"id": "c3", "category": cat, "image": "a.jpg", "price": "cheap"},  # 7
        {"id": a, "category": cat, "image": "a.jpg"},  # 8
    ]
    table = _write_csv(tmp_path / "bad.csv", rows)
    assert _import(artifacts, table) == 1
    err = capsys.readouterr().err
    for line, words in [(3, "unknown category"), (4, "invalid product id"),
                        (5, "unreadable image"), (6, "missing.jpg"), (7, "price"),
                        (8, "repeats line 2")]:  # fmt: skip
        assert f"bad.csv:{line}: " in err and words in err.split(f"bad.csv:{line}: ")[1]
    assert "bad.csv:2:" not in err
    assert store.current() == before and store.attributes.read() == (0, {})
    assert _import(artifacts, table, "--skip-bad") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == 1 and [e["line"] for e in report["errors"]] == [3, 4, 5, 6, 7, 8]
    assert a in store.categories_of()


class _Flaky(QuietHandler):
    """Serves a folder; every first request of a path fails with 503."""

    seen: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        if self.path not in self.seen:
            self.seen.add(self.path)
            self.send_error(503)
            return
        super().do_GET()


@pytest.fixture
def image_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    with folder_server(root, _Flaky) as url:
        yield url, root


def test_jsonl_through_the_admin_route_with_url_images_fetched_with_retries(
    stl_dir: Path, artifacts: Path, image_server: tuple[str, Path]
) -> None:
    base, root = image_server
    (a, cat, path), (b, cat_b, path_b) = _new_products(stl_dir, artifacts, 2)
    (root / "a.jpg").write_bytes(path.read_bytes())
    (root / "b.jpg").write_bytes(path_b.read_bytes())
    lines = [
        {"id": a, "category": cat, "image": f"{base}/a.jpg", "price": 10,
         "attributes": {"color": "red"}},
        {"id": b, "category": cat_b, "image": f"{base}/b.jpg", "in_stock": False},
    ]  # fmt: skip
    body = "\n".join(json.dumps(x) for x in lines) + "\n"
    with serve(settings_for(artifacts, stl_dir)) as client:
        before = client.get("/readyz").json()["index_version"]
        r = client.post(
            "/admin/catalog/import",
            content=body,
            headers={**admin_headers(), "Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["added"] == 2 and r.json()["index_version"] != before
        got = client.get(f"/products/{a}").json()
        assert got["price"] == 10 and got["attributes"] == {"color": "red"}
        assert client.get(f"/products/{b}").json()["in_stock"] is False
        bad = body + json.dumps({"id": "x1", "category": cat, "image": f"{base}/nope.jpg"})
        r = client.post(
            "/admin/catalog/import",
            content=bad,
            headers={**admin_headers(), "Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 422 and "line 3: image" in r.json()["detail"]
        assert client.get("/products/x1").status_code == 404


def test_a_patch_during_an_import_is_not_lost(stl_dir: Path, artifacts: Path) -> None:
    (a, cat, path), *_ = _new_products(stl_dir, artifacts, 1)
    store = IndexStore.for_artifacts(artifacts)
    pid, pcat = sorted(store.categories_of().items())[0]
    rows = [
        {"id": a, "category": cat, "image": str(path)},
        {"id": pid, "category": pcat, "image": str(store.image_path(pid)), "price": "12.5"},
    ]
    body = "\n".join(json.dumps(r) for r in rows)
    headers = admin_headers()
    with serve(settings_for(artifacts, stl_dir)) as client, ThreadPoolExecutor(2) as pool:
        imported = pool.submit(
            client.post,
            "/admin/catalog/import",
            content=body,
            headers={**headers, "Content-Type": "application/x-ndjson"},
        )
        patched = pool.submit(
            client.patch, f"/admin/products/{pid}", json={"in_stock": False}, headers=headers
        )
        codes = imported.result().status_code, patched.result().status_code
        assert codes in ((200, 200), (200, 409), (409, 200)), codes
        got = client.get(f"/products/{pid}").json()
        if codes[0] == 200:
            assert got["price"] == 12.5
        if codes[1] == 200:
            assert got["in_stock"] is False


def test_parquet_tables_import_like_csv(
    stl_dir: Path, artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (a, cat, path), *_ = _new_products(stl_dir, artifacts, 1)
    table = pa.table(
        {"id": [a], "category": [cat], "image": [str(path)], "price": [19.0],
         "in_stock": [False], "size": [42]}
    )  # fmt: skip
    pq.write_table(table, tmp_path / "catalog.parquet")
    assert _import(artifacts, tmp_path / "catalog.parquet") == 0
    assert json.loads(capsys.readouterr().out)["added"] == 1
    _, records = IndexStore.for_artifacts(artifacts).attributes.read()
    assert records[a] == {"price": 19.0, "in_stock": False, "attributes": {"size": 42}}
