"""index/filters.py and the filtered search: exact equality with a brute-force filtered ranking
on flat indexes, recall on IVF-PQ, k results whenever k pass, attribute snapshots and store."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from factories import synthetic_unit_vectors

from index.attributes import (
    MAX_ATTRIBUTES,
    AttributesError,
    AttributeStore,
    merge,
    parse_update,
)
from index.filters import FilterError, ProductFilter
from index.search import (
    FLAT,
    IVFPQ,
    CatalogIndex,
    CategoryIndex,
    Product,
    make_index,
    recommend,
    similar_to_product,
)
from runtime.encoder import SceneEmbedding

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _catalog(n: int, kind: str = FLAT, dim: int = DIM, seed: int = 0) -> CatalogIndex:
    emb = synthetic_unit_vectors(n, dim, seed=seed)
    ids = [f"p{i}" for i in range(n)]
    cat = CategoryIndex("Shoes", ids, emb, make_index(emb, kind), kind)
    products = {pid: Product(pid, "Shoes", Path(f"/nowhere/{pid}.jpg")) for pid in ids}
    return CatalogIndex("v1", "m1", dim, {"Shoes": cat}, products)


def _scene(seed: int, dim: int = DIM) -> SceneEmbedding:
    rng = np.random.default_rng(seed)
    att = np.exp(rng.normal(size=(1, 16)) * 3)
    att /= att.sum()
    f_s = synthetic_unit_vectors(1, dim, seed=100 + seed)[0]
    f_i = _unit(rng.normal(size=(16, dim)) * 0.1 + f_s)
    return SceneEmbedding(f_s, f_i, att.astype(np.float32))


def _records(n: int, seed: int = 0) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    brands = ["acme", "zeta", "nova"]
    return {
        f"p{i}": {
            "in_stock": bool(rng.random() < 0.7),
            "price": float(rng.integers(5, 200)),
            "brand": brands[i % 3],
            "attributes": {"color": ["red", "blue"][i % 2], "size": int(rng.integers(36, 46))},
        }
        for i in range(n)
    }


def _passes(rec: dict, flt: ProductFilter) -> bool:
    """The filter's meaning, product by product."""
    if flt.in_stock_only and not rec.get("in_stock", True):
        return False
    price = rec.get("price")
    if flt.price_min is not None and (price is None or price < flt.price_min):
        return False
    if flt.price_max is not None and (price is None or price > flt.price_max):
        return False
    if flt.brand is not None:
        brands = flt.brand if isinstance(flt.brand, list) else [flt.brand]
        if rec.get("brand") not in brands:
            return False
    for key, values in flt.attributes.items():
        listed = values if isinstance(values, list) else [values]
        if _number(rec.get("attributes", {}).get(key)) not in [_number(v) for v in listed]:
            return False
    return True


def _number(value: object) -> object:
    """Numbers compare as numbers (42 == 42.0); other values as they are."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


FILTERS = [
    {},
    {"in_stock_only": False},
    {"brand": ["acme", "nova"], "price_max": 120},
    {"attributes": {"color": "red", "size": [38, 40, 42]}, "exclude": ["p3", "p5"]},
    {"price_min": 50, "price_max": 60, "brand": "zeta"},
    {"brand": "nobody"},
]


@pytest.mark.parametrize("raw", FILTERS)
def test_flat_filtered_results_equal_a_brute_force_filtered_d_star_ranking(raw: dict) -> None:
    catalog = _catalog(600)
    records = _records(600)
    catalog.attributes = catalog.attributes_at(1, records)
    flt = ProductFilter.parse(raw)
    cat = catalog.category("Shoes")
    for seed in range(3):
        emb = _scene(seed)
        got = recommend(catalog, emb, 0, "Shoes", k=10, flt=flt)
        passing = [i for i, pid in enumerate(cat.ids) if _passes(records[pid], flt)]
        passing = [i for i in passing if cat.ids[i] not in flt.exclude]
        q = emb.f_s + emb.attention[0] @ emb.f_i
        d_star = 2.0 - cat.emb[passing].astype(np.float64) @ q.astype(np.float64)
        want = [cat.ids[passing[j]] for j in np.argsort(d_star, kind="stable")[:10]]
        assert [s.id for s in got] == want
        assert len(got) == min(10, len(passing))


@pytest.mark.parametrize("selectivity", [0.5, 0.1, 0.01])
@pytest.mark.parametrize("exact_max", [None, 0])
def test_ivfpq_filtered_recall_at_10(
    selectivity: float, exact_max: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """>= 0.95 of the exact filtered top 10, with the FAISS selector (``exact_max=0``) and
    with the default switch to exact search for small passing sets."""
    if exact_max is not None:
        monkeypatch.setattr("index.search.EXACT_FILTERED_MAX", exact_max)
    n, dim = 40_000, 64
    approx = _catalog(n, IVFPQ, dim, seed=1)
    rng = np.random.default_rng(7)
    stock = rng.random(n) < selectivity
    approx.attributes = approx.attributes_at(
        1, {f"p{i}": {"in_stock": bool(s)} for i, s in enumerate(stock)}
    )
    cat = approx.category("Shoes")
    passing = np.flatnonzero(stock)
    hits = total = 0
    for seed in range(30):
        emb = _scene(seed, dim)
        q = emb.f_s + emb.attention[0] @ emb.f_i
        exact = passing[np.argsort(-(cat.emb[passing] @ q))[:10]]
        got = recommend(approx, emb, 0, "Shoes", k=10)
        assert len(got) == 10
        assert all(stock[cat.row[s.id]] for s in got)
        hits += len({cat.ids[i] for i in exact} & {s.id for s in got})
        total += 10
    assert hits / total >= 0.95, f"recall@10 {hits / total:.3f} at {selectivity:.0%}"


def test_k_results_whenever_k_pass_even_when_the_probed_lists_hold_fewer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("index.search.EXACT_FILTERED_MAX", 0)
    catalog = _catalog(5_000, IVFPQ, 64, seed=2)
    # 12 products pass: the probed lists almost surely hold fewer than 10 of them.
    records = {f"p{i}": {"in_stock": i % 400 == 0} for i in range(5_000)}
    catalog.attributes = catalog.attributes_at(1, records)
    cat = catalog.category("Shoes")
    calls: list[int] = []
    monkeypatch.setattr(cat, "index", _Spy(cat.index, calls))
    # candidates=10 < 13 passing: the selector search runs, finds too few, exact takes over.
    got = recommend(catalog, _scene(0, 64), 0, "Shoes", k=10, candidates=10)
    assert calls, "the FAISS selector search did not run"
    assert len(got) == 10 and all(int(s.id[1:]) % 400 == 0 for s in got)
    got = recommend(catalog, _scene(0, 64), 0, "Shoes", k=20)
    assert len(got) == 13  # every passing one, no more


class _Spy:
    """A FAISS index that records how many results each search found."""

    def __init__(self, index: object, calls: list[int]) -> None:
        self._index, self._calls = index, calls

    def search(self, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        d, i = self._index.search(*args, **kwargs)  # type: ignore[attr-defined]
        self._calls.append(int((i >= 0).sum()))
        return d, i


def test_similar_filters_and_excludes_the_product_itself() -> None:
    catalog = _catalog(300)
    records = _records(300)
    catalog.attributes = catalog.attributes_at(1, records)
    flt = ProductFilter.parse({"brand": "acme"})
    found = similar_to_product(catalog, "p0", 5, flt)
    assert len(found) == 5
    assert all(records[s.id]["brand"] == "acme" and records[s.id]["in_stock"] for s in found)
    assert "p0" not in [s.id for s in found]


def test_a_snapshot_update_rewrites_only_its_rows_and_leaves_the_old_one() -> None:
    catalog = _catalog(50)
    old = catalog.attributes_at(1, _records(50))
    new = old.apply(2, {"p1": {"in_stock": False, "brand": "fresh"}, "gone": {"price": 1.0}})
    row = catalog.category("Shoes").row["p1"]
    assert new.revision == 2 and new.record("p1") == {"in_stock": False, "brand": "fresh"}
    assert not new.category("Shoes").in_stock[row]
    assert np.isnan(new.category("Shoes").price[row])
    assert old.record("p1") == _records(50)["p1"]
    assert old.category("Shoes").in_stock[row] == _records(50)["p1"]["in_stock"]
    flt = ProductFilter.parse({"brand": "fresh", "in_stock_only": False})
    mask = flt.mask(new.category("Shoes"), catalog.category("Shoes").row)
    assert mask is not None and np.flatnonzero(mask).tolist() == [row]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"colour": "red"}, "valid keys: in_stock_only, exclude, brand, attributes"),
        ({"price_min": 10, "price_max": 5}, "price_min (10.0) > price_max (5.0)"),
        ("[1, 2]", "must be a JSON object"),
        ("{nope", "not valid JSON"),
        ({"attributes": {"bad key": "x"}}, "filter.attributes"),
    ],
)
def test_bad_filters_name_the_problem(raw: object, message: str) -> None:
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ProductFilter.parse(raw)  # type: ignore[arg-type]


def test_default_filter_has_one_cache_key_and_others_differ() -> None:
    assert ProductFilter.parse(None).cache_key() == ProductFilter.parse("{}").cache_key()
    keys = {ProductFilter.parse(f).cache_key() for f in FILTERS}
    assert len(keys) == len(FILTERS)


def test_attribute_updates_are_validated_and_bounded() -> None:
    assert parse_update({"in_stock": False, "title": None}) == {"in_stock": False, "title": None}
    with pytest.raises(AttributesError, match="valid fields: title, price"):
        parse_update({"stock": 3})
    with pytest.raises(AttributesError, match="price"):
        parse_update({"price": -1})
    too_many = {f"k{i}": i for i in range(MAX_ATTRIBUTES + 1)}
    with pytest.raises(AttributesError, match=f"at most {MAX_ATTRIBUTES}"):
        parse_update({"attributes": too_many})
    with pytest.raises(AttributesError, match="attributes"):
        parse_update({"attributes": {"x": "y" * 1000}})
    half = {f"a{i}": i for i in range(MAX_ATTRIBUTES)}
    with pytest.raises(AttributesError, match="this update makes"):
        merge({"attributes": half}, {"attributes": {"one-more": 1}})
    assert merge({"attributes": {"a": 1, "b": 2}, "price": 3.0}, {"attributes": {"a": None}}) == {
        "attributes": {"b": 2},
        "price": 3.0,
    }


def test_store_revisions_and_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    store = AttributeStore(tmp_path / "attributes.sqlite")
    assert store.revision() == 0 and store.read() == (0, {})
    rev, stored = store.update({"a": {"price": 5.0}, "b": {"in_stock": False}})
    assert rev == 1 and stored["a"] == {"price": 5.0}
    # Two writers at once, each setting its own field of the same product, many times.
    errors: list[BaseException] = []

    def write(field: str, values: range) -> None:
        try:
            for v in values:
                store.update({"a": {field: float(v)}})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=write, args=("popularity", range(50))),
        threading.Thread(target=write, args=("price", range(50))),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rev, records = store.read()
    assert rev == 101
    assert records["a"] == {"price": 49.0, "popularity": 49.0}
    assert store.read(since=100)[1] == {"a": records["a"]}
