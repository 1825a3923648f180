"""index/search.py: single-query search ranks by d*, re-scoring, similar products, ANN recall."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np
import pytest
from factories import synthetic_unit_vectors

from index.filters import ProductFilter
from index.prior import PopularityPrior
from index.search import (
    FLAT,
    IVFPQ,
    CatalogIndex,
    CategoryIndex,
    Product,
    faiss_gpu_fallback_warning,
    make_index,
    recommend,
    score,
    set_search_threads,
    similar,
    similar_to_product,
)
from runtime.encoder import SceneEmbedding

DIM = 32
CATS = ["Shoes", "Pants"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _catalog(counts: dict[str, int], kind: str = FLAT, seed: int = 0) -> CatalogIndex:
    rng = np.random.default_rng(seed)
    cats: dict[str, CategoryIndex] = {}
    products: dict[str, Product] = {}
    for name, n in counts.items():
        ids = [f"{name[:2]}{i}" for i in range(n)]
        emb = _unit(rng.normal(size=(n, DIM)))
        cats[name] = CategoryIndex(name, ids, emb, make_index(emb, kind), kind)
        products.update({pid: Product(pid, name, Path(f"/nowhere/{pid}.jpg")) for pid in ids})
    return CatalogIndex("v1", "m1", DIM, cats, products)


def _scene(seed: int) -> SceneEmbedding:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(CATS), 49)) * 3
    att = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return SceneEmbedding(
        _unit(rng.normal(size=DIM)), _unit(rng.normal(size=(49, DIM))), att.astype(np.float32)
    )


def _brute_force_d_star(emb: SceneEmbedding, c: int, f_p: np.ndarray) -> np.ndarray:
    """The paper's definition, product by product, region by region."""
    out = []
    for p in f_p.astype(np.float64):
        d_global = float(((emb.f_s - p) ** 2).sum())
        regions = zip(emb.attention[c], emb.f_i, strict=True)
        d_local = sum(float(a) * float(((f - p) ** 2).sum()) for a, f in regions)
        out.append((d_global + d_local) / 2)
    return np.array(out)


def test_faiss_gpu_build_on_the_cpu_is_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(faiss, "StandardGpuResources", raising=False)
    assert faiss_gpu_fallback_warning("cpu") is None
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    assert faiss_gpu_fallback_warning("cuda") is None
    warning = faiss_gpu_fallback_warning("cpu")
    assert warning is not None and "faiss-gpu" in warning


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_query_ranks_like_d_star_for_every_product(seed: int) -> None:
    catalog = _catalog({"Shoes": 300, "Pants": 120}, seed=seed)
    emb = _scene(seed + 10)
    for c, name in enumerate(CATS):
        cat = catalog.category(name)
        got = recommend(catalog, emb, c, name, k=len(cat))
        want = _brute_force_d_star(emb, c, cat.emb)
        assert [s.id for s in got] == [cat.ids[i] for i in np.argsort(want, kind="stable")]
        np.testing.assert_allclose([s.d_star for s in got], np.sort(want), atol=1e-5)
        top = recommend(catalog, emb, c, name, k=5)
        assert [s.id for s in top] == [s.id for s in got[:5]]
        for s in top:
            assert s.category == name
            assert s.d_star == pytest.approx((s.d_global + s.d_local) / 2)


def test_score_reports_unknown_ids() -> None:
    catalog = _catalog({"Shoes": 20, "Pants": 20})
    emb = _scene(3)
    ranked = recommend(catalog, emb, 1, "Pants", k=3)
    scored, unknown = score(catalog, emb, CATS, [ranked[2].id, "nope", ranked[0].id])
    assert unknown == ["nope"]
    assert [s.id for s in scored] == [ranked[2].id, ranked[0].id]
    assert scored[0] == ranked[2]
    with pytest.raises(KeyError, match="unknown category"):
        recommend(catalog, emb, 0, "Hats", k=3)


def test_similar_excludes_the_product_and_sorts_by_distance() -> None:
    catalog = _catalog({"Shoes": 200})
    pid = "Sh7"
    found = similar_to_product(catalog, pid, k=5)
    cat = catalog.category("Shoes")
    dist = ((cat.emb - cat.emb[cat.row[pid]]) ** 2).sum(axis=1)
    want = [cat.ids[i] for i in np.argsort(dist) if cat.ids[i] != pid][:5]
    assert [s.id for s in found] == want
    assert [s.distance for s in found] == sorted(s.distance for s in found)
    assert similar(catalog, cat.emb[cat.row[pid]], "Shoes", 1)[0].id == pid
    with pytest.raises(KeyError):
        similar_to_product(catalog, "missing", 3)


def test_approximate_index_recall_at_10() -> None:
    """IVF-PQ plus exact re-ranking finds >= 95% of the exact top 10 (synthetic embeddings)."""
    n, dim = 20_000, 128
    emb = synthetic_unit_vectors(n, dim, seed=1)
    queries = synthetic_unit_vectors(100, dim, seed=2)
    ids = [str(i) for i in range(n)]
    exact = CategoryIndex("x", ids, emb, make_index(emb, FLAT), FLAT)
    approx = CategoryIndex("x", ids, emb, make_index(emb, IVFPQ), IVFPQ)
    hits = 0
    for q in queries:
        hits += len(set(exact.nearest(q, 10)) & set(approx.nearest(q, 10)))
    assert hits / (10 * len(queries)) >= 0.95


def test_set_search_threads() -> None:
    before = faiss.omp_get_max_threads()
    try:
        set_search_threads(1)
        assert faiss.omp_get_max_threads() == 1
        set_search_threads(0)
        assert faiss.omp_get_max_threads() == (os.cpu_count() or 1)
    finally:
        faiss.omp_set_num_threads(before)


@pytest.mark.parametrize("kind", [FLAT, IVFPQ])
def test_popularity_prior_ranks_by_d_star_minus_lambda_log_popularity(kind: str) -> None:
    """With the prior, the order is d* - lambda log(1 + count) over the whole category (flat)
    or the re-ranked candidates (IVF-PQ, here every product); without it, d* alone."""
    catalog = _catalog({"Shoes": 400, "Pants": 50}, kind=kind)
    emb = _scene(3)
    cat = catalog.category("Shoes")
    rng = np.random.default_rng(1)
    counts = {
        pid: int(c) for pid, c in zip(cat.ids, rng.integers(0, 30, len(cat.ids)), strict=True)
    }
    plain = [s.id for s in recommend(catalog, emb, 0, "Shoes", 10, candidates=400)]
    catalog.apply_prior(PopularityPrior(0.3, counts))
    assert cat.bonus is not None and cat.bonus.shape == (400,)
    ranked = recommend(catalog, emb, 0, "Shoes", 10, candidates=400)
    d_star = _brute_force_d_star(emb, 0, cat.emb)
    adjusted = d_star - 0.3 * np.log1p([counts[p] for p in cat.ids])
    assert [s.id for s in ranked] == [cat.ids[i] for i in np.argsort(adjusted)[:10]]
    row = {pid: i for i, pid in enumerate(cat.ids)}
    assert [s.d_star for s in ranked] == pytest.approx(
        [d_star[row[s.id]] for s in ranked], abs=1e-5
    )
    assert [s.id for s in ranked] != plain  # the prior changed the order
    catalog.apply_prior(None)
    assert [s.id for s in recommend(catalog, emb, 0, "Shoes", 10, candidates=400)] == plain


@pytest.mark.parametrize("kind", [FLAT, IVFPQ])
def test_a_shops_popularity_attribute_overrides_the_exported_counts(kind: str) -> None:
    """Where the shop set ``popularity``, the prior uses it instead of the training counts (the
    same lambda), also among the rows a filter keeps; without a prior it changes nothing."""
    catalog = _catalog({"Shoes": 400, "Pants": 50}, kind=kind)
    emb = _scene(4)
    cat = catalog.category("Shoes")
    plain = [s.id for s in recommend(catalog, emb, 0, "Shoes", 12, candidates=400)][:10]
    more = [s.id for s in recommend(catalog, emb, 0, "Shoes", 12, candidates=400)]
    last = cat.ids[int(np.argmax(_brute_force_d_star(emb, 0, cat.emb)))]  # the worst match
    sold = {last: {"popularity": 1e12}}
    with_attr = catalog.attributes_at(1, sold)
    no_prior = recommend(catalog, emb, 0, "Shoes", 10, candidates=400, attributes=with_attr)
    assert [s.id for s in no_prior] == plain  # lambda 0: the attribute is not a ranking
    catalog.apply_prior(PopularityPrior(0.3, {pid: 1 for pid in cat.ids}))
    counted = [s.id for s in recommend(catalog, emb, 0, "Shoes", 10, candidates=400)]
    assert counted == plain  # equal counts: the same order
    ranked = recommend(catalog, emb, 0, "Shoes", 10, candidates=400, attributes=with_attr)
    assert ranked[0].id == last and [s.id for s in ranked[1:]] == plain[:9]
    flt = ProductFilter.parse(json.dumps({"exclude": plain[:3]}))
    kept = recommend(catalog, emb, 0, "Shoes", 10, 400, flt, with_attr)
    assert [s.id for s in kept] == [last, *more[3:12]]


def test_prior_of_artifacts_is_read_from_the_manifest(tmp_path: Path) -> None:
    assert PopularityPrior.from_artifacts(tmp_path) is None  # no manifest: no prior
    (tmp_path / "popularity.json").write_text(json.dumps({"a": 3, "b": 0}))
    manifest = {"prior": {"weight": 0.5, "file": "popularity.json"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    prior = PopularityPrior.from_artifacts(tmp_path)
    assert prior is not None and prior.weight == 0.5
    assert prior.bonus(["a", "b", "unknown"]) == pytest.approx([0.5 * np.log(4), 0.0, 0.0])
    (tmp_path / "manifest.json").write_text(json.dumps({"prior": None}))
    assert PopularityPrior.from_artifacts(tmp_path) is None
