"""Per-category FAISS search and the exact re-scoring that turns candidates into d*.

Retrieval is one inner-product search per (scene, category) with q = f_s + sum_i a_i f_i,
because with unit vectors d*(s, p) = 2 - <q, f_p>. The candidates are then re-scored from the
stored embeddings, which gives d_global and d_local too and repairs any approximation error.
With a popularity prior (``index/prior.py``) the order is d* - lambda log(1 + popularity): exact
over a flat index, over the re-ranked candidates of an approximate one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# FAISS's OpenMP threads spin while they wait; on a busy machine that made an index build many
# times slower (docs/performance.md). Passive waiting must be chosen before OpenMP starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import faiss
import numpy as np

from index.attributes import CatalogAttributes
from index.filters import DEFAULT_FILTER, ProductFilter
from index.prior import PopularityPrior
from runtime.encoder import SceneEmbedding

log = logging.getLogger(__name__)

FLAT = "flat"
IVFPQ = "ivfpq"
DEFAULT_NPROBE = 128
"""IVF lists visited per query: bench/bench_index.py shows recall@10 >= 0.95 at 1M vectors."""
DEFAULT_CANDIDATES = 500
"""Approximate candidates re-ranked exactly (``Settings.rerank_candidates``)."""
EXACT_FILTERED_MAX = 20_000
"""A filter passing at most this many rows of an approximate index is answered by an exact
search over them: cheaper than the IVF scan, and never short of k (bench/bench_filters.py)."""


@dataclass(frozen=True)
class Scored:
    """One recommended product with the paper's distances (lower is a better match)."""

    id: str
    category: str
    d_star: float
    d_global: float
    d_local: float


@dataclass(frozen=True)
class Similar:
    """A visually similar product: squared distance between product embeddings."""

    id: str
    category: str
    distance: float


@dataclass(frozen=True)
class Product:
    """A catalog product and the path of its stored image."""

    id: str
    category: str
    image: Path


def make_index(emb: np.ndarray, kind: str, seed: int = 0) -> faiss.Index:
    """A CPU inner-product index over the rows of ``emb`` (unit vectors, float32).

    ``ivfpq`` is IVF with 4-bit PQ fast-scan codes (D/2 sub-quantizers): cheap to scan many
    lists, approximate scores; the candidates are re-ranked exactly from the stored embeddings.
    """
    n, dim = emb.shape
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if kind == FLAT:
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif kind == IVFPQ:
        # About 2 sqrt(n) lists: few enough to train in a minute on 2 cores at 1M vectors.
        nlist = max(1, min(n // 39, int(2 * math.sqrt(n))))
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{dim // 2}x4fs", faiss.METRIC_INNER_PRODUCT)
        sample = nlist * 40
        if n > sample:
            emb_train = emb[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
        else:
            emb_train = emb
        index.train(emb_train)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    if n:
        index.add(emb)
    return index


def set_search_threads(n: int) -> None:
    """FAISS's OpenMP threads for this process (``n <= 0``: every core)."""
    faiss.omp_set_num_threads(n if n > 0 else os.cpu_count() or 1)


def faiss_gpu_available() -> bool:
    """True when this faiss build has GPU support and sees a GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_gpu_fallback_warning(device_in_use: str) -> str | None:
    """Why a GPU build of faiss searches on the CPU, or ``None`` (see gpu_fallback_warning)."""
    if hasattr(faiss, "StandardGpuResources") and device_in_use != "cuda":
        return "faiss-gpu is installed but FAISS searches on the CPU: it sees no GPU"
    return None


class CategoryIndex:
    """One category: its product ids, their embeddings and the FAISS index over them."""

    def __init__(
        self, name: str, ids: list[str], emb: np.ndarray, index: faiss.Index, kind: str
    ) -> None:
        if len(ids) != emb.shape[0] or index.ntotal != len(ids):
            raise ValueError(
                f"category {name!r}: {len(ids)} ids, {emb.shape[0]} embeddings, "
                f"{index.ntotal} indexed vectors"
            )
        self.name = name
        self.ids = ids
        self.emb = emb
        self.index = index
        self.kind = kind
        self.row = {pid: i for i, pid in enumerate(ids)}
        self.bonus: np.ndarray | None = None  # (n,) the prior's lambda log(1 + popularity)
        self.nprobe = DEFAULT_NPROBE
        if kind == IVFPQ:
            faiss.extract_index_ivf(index).nprobe = DEFAULT_NPROBE

    def __len__(self) -> int:
        return len(self.ids)

    def nearest(
        self,
        q: np.ndarray,
        k: int,
        candidates: int = DEFAULT_CANDIDATES,
        mask: np.ndarray | None = None,
        bonus: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rows of the ``k`` largest <q, f_p> (+ ``bonus`` per row: the popularity prior) for
        one query (D,), best first, among the rows where ``mask`` is true (all rows without one).

        Exact indexes answer directly (with a bonus, from every stored embedding: a flat index
        is a scan anyway); approximate ones return ``candidates`` rows that are re-ranked by
        their exact inner product (+ bonus) with the stored embeddings. A mask reaches an
        approximate index as a FAISS ``IDSelectorBitmap``; a flat index, a small passing set,
        or an approximate search that found fewer than k passing rows is answered exactly over
        the passing rows, so k rows come back whenever k pass.
        """
        if mask is not None:
            return self._nearest_filtered(q, k, candidates, mask, bonus)
        n = min(k if self.kind == FLAT else max(k, candidates), len(self.ids))
        if n <= 0:
            return np.zeros(0, np.int64)
        if bonus is not None and self.kind == FLAT:
            return self._exact_among(q, k, np.arange(len(self.ids)), bonus)
        found = self._search(q, n)
        return found if self.kind == FLAT else self._rerank(q, found, k, bonus)

    def _search(self, q: np.ndarray, n: int, params: Any = None) -> np.ndarray:
        query = np.ascontiguousarray(q.reshape(1, -1), dtype=np.float32)
        _, rows = self.index.search(query, n, params=params)
        return rows[0][rows[0] >= 0]  # -1: fewer than n found

    def _scores(self, q: np.ndarray, rows: np.ndarray, bonus: np.ndarray | None) -> np.ndarray:
        """Exact <q, f_p> (+ bonus) of ``rows``."""
        # einsum, not ``@``: OpenBLAS splits a matrix-vector product over its threads, and on a
        # busy 2-core machine 6,000 rows took 24 ms that way against 0.3 ms, and 500 rows varied
        # from 1 to 10 ms from call to call (bench_filters.py).
        scores = np.einsum("ij,j->i", self.emb[rows], q.astype(np.float32))
        return scores if bonus is None else scores + bonus[rows]

    def _rerank(
        self, q: np.ndarray, rows: np.ndarray, k: int, bonus: np.ndarray | None
    ) -> np.ndarray:
        return rows[np.argsort(-self._scores(q, rows, bonus), kind="stable")[:k]]

    def _nearest_filtered(
        self,
        q: np.ndarray,
        k: int,
        candidates: int,
        mask: np.ndarray,
        bonus: np.ndarray | None,
    ) -> np.ndarray:
        passing = int(np.count_nonzero(mask))
        if passing == 0 or k <= 0:
            return np.zeros(0, np.int64)
        if self.kind == FLAT or passing <= max(EXACT_FILTERED_MAX, candidates):
            return self._exact_among(q, k, np.flatnonzero(mask), bonus)
        bits = np.packbits(mask, bitorder="little")
        # ``bits`` and ``selector`` stay referenced here until the search returns: FAISS keeps
        # raw pointers to them.
        selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
        params = faiss.SearchParametersIVF()
        params.sel = selector
        params.nprobe = self.nprobe
        found = self._search(q, min(max(k, candidates), passing), params)
        if len(found) < min(k, passing):  # the probed lists held too few: search them all
            return self._exact_among(q, k, np.flatnonzero(mask), bonus)
        return self._rerank(q, found, k, bonus)

    def _exact_among(
        self, q: np.ndarray, k: int, rows: np.ndarray, bonus: np.ndarray | None = None
    ) -> np.ndarray:
        """The ``k`` best of ``rows`` by exact inner product (+ bonus), best first."""
        scores = self._scores(q, rows, bonus)
        if len(rows) > k:
            top = np.argpartition(-scores, k - 1)[:k]
            rows, scores = rows[top], scores[top]
        return rows[np.argsort(-scores, kind="stable")]


class CatalogIndex:
    """One loaded index version: what the service searches and serves product data from."""

    def __init__(
        self,
        version: str,
        model_version: str,
        dim: int,
        categories: dict[str, CategoryIndex],
        products: dict[str, Product],
        faiss_device: str = "cpu",
    ) -> None:
        self.version = version
        self.model_version = model_version
        self.dim = dim
        self._cats = categories
        self._products = products
        self.faiss_device = faiss_device
        self.prior_weight = 0.0
        self.attributes = self.attributes_at(0, {})
        """The product attributes served now: swapped whole (``attributes_at``, ``.apply``)
        when they change, so a request that took one sees one revision."""

    def locate(self, pid: str) -> tuple[str, int] | None:
        """(category, index row) of a product, or ``None``."""
        p = self._products.get(pid)
        if p is None:
            return None
        return p.category, self._cats[p.category].row[pid]

    def attributes_at(self, revision: int, records: dict[str, dict]) -> CatalogAttributes:
        """A snapshot of ``records`` (id -> attributes) laid out on this catalog's rows."""
        rows = {name: cat.ids for name, cat in self._cats.items()}
        return CatalogAttributes.build(revision, records, rows, self.locate)

    @property
    def categories(self) -> list[str]:
        return list(self._cats)

    def __len__(self) -> int:
        return len(self._products)

    def category(self, name: str) -> CategoryIndex:
        if name not in self._cats:
            raise KeyError(f"unknown category {name!r}; the index has {sorted(self._cats)}")
        return self._cats[name]

    def count(self, category: str) -> int:
        return len(self.category(category))

    def product(self, pid: str) -> Product | None:
        return self._products.get(pid)

    def apply_prior(self, prior: PopularityPrior | None) -> None:
        """Rank by d* - lambda log(1 + popularity) from now on (``None``: by d* alone). Each
        category keeps the per-product array (``CategoryIndex.bonus``) in its row order."""
        self.prior_weight = 0.0 if prior is None else prior.weight
        for cat in self._cats.values():
            cat.bonus = None if prior is None else prior.bonus(cat.ids)

    def bonus(self, category: str, attributes: CatalogAttributes) -> np.ndarray | None:
        """The prior's lambda log(1 + popularity) per row of ``category``: the shop's
        ``popularity`` attribute where it gave one, the exported counts elsewhere; ``None``
        without a prior."""
        cat = self.category(category)
        if cat.bonus is None:
            return None
        pop = attributes.category(category).popularity
        given = ~np.isnan(pop)
        if not given.any():
            return cat.bonus
        out = cat.bonus.copy()
        out[given] = self.prior_weight * np.log1p(np.maximum(pop[given], 0.0))
        return out

    def embeddings(self, ids: Sequence[str]) -> np.ndarray:
        """(N, D) stored product embeddings; KeyError naming the unknown ids."""
        unknown = [i for i in ids if i not in self._products]
        if unknown:
            raise KeyError(f"unknown product ids: {unknown}")
        out = np.zeros((len(ids), self.dim), np.float32)
        for n, pid in enumerate(ids):
            cat = self._cats[self._products[pid].category]
            out[n] = cat.emb[cat.row[pid]]
        return out


def exact_distances(
    f_s: np.ndarray, f_i: np.ndarray, att: np.ndarray, f_p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """d*, d_global, d_local (each (N,)) of one scene against products f_p (N, D), in float64."""
    fs = f_s.astype(np.float64)
    fi = f_i.astype(np.float64)
    fp = f_p.astype(np.float64)
    d_global = ((fp - fs[None, :]) ** 2).sum(axis=1)
    # sum_i a_i |f_i - f_p|^2 = sum_i a_i |f_i|^2 - 2 <sum_i a_i f_i, f_p> + |f_p|^2 (sum a_i = 1)
    a = att.astype(np.float64)
    d_local = a @ (fi**2).sum(axis=1) - 2.0 * fp @ (a @ fi) + (fp**2).sum(axis=1) * a.sum()
    return (d_global + d_local) / 2.0, d_global, d_local


def _scored(
    ids: Sequence[str], category: str, emb: SceneEmbedding, cat_idx: int, f_p: np.ndarray
) -> list[Scored]:
    d_star, d_g, d_l = exact_distances(emb.f_s, emb.f_i, emb.attention[cat_idx], f_p)
    return [
        Scored(pid, category, float(d_star[n]), float(d_g[n]), float(d_l[n]))
        for n, pid in enumerate(ids)
    ]


def recommend(
    catalog: CatalogIndex,
    emb: SceneEmbedding,
    cat_idx: int,
    category: str,
    k: int,
    candidates: int = DEFAULT_CANDIDATES,
    flt: ProductFilter = DEFAULT_FILTER,
    attributes: CatalogAttributes | None = None,
) -> list[Scored]:
    """The ``k`` products of ``category`` that pass ``flt`` with the lowest d* for this scene
    (fewer only when fewer pass), less the popularity prior when the catalog has one
    (``CatalogIndex.apply_prior``; a shop's ``popularity`` attribute overrides the exported
    counts).

    ``cat_idx`` is the category's position in the encoder's categories (the attention row).
    Approximate indexes fetch ``candidates`` (>= k) that are re-scored exactly. The filter and
    the prior read ``attributes`` (default: the catalog's current ones).
    """
    cat = catalog.category(category)
    q = emb.f_s + emb.attention[cat_idx] @ emb.f_i
    attrs = attributes if attributes is not None else catalog.attributes
    mask = flt.mask(attrs.category(category), cat.row)
    bonus = catalog.bonus(category, attrs)
    rows = [int(r) for r in cat.nearest(q, k, candidates, mask, bonus)]
    scored = _scored([cat.ids[r] for r in rows], category, emb, cat_idx, cat.emb[rows])
    prior = np.zeros(len(rows)) if bonus is None else bonus[rows].astype(np.float64)
    order = np.argsort([s.d_star - b for s, b in zip(scored, prior, strict=True)], kind="stable")
    return [scored[i] for i in order]


def score(
    catalog: CatalogIndex, emb: SceneEmbedding, categories: Sequence[str], ids: Iterable[str]
) -> tuple[list[Scored], list[str]]:
    """d*, d_global, d_local of the given products (in the given order), and the unknown ids.

    ``categories`` is the encoder's category list, which orders the attention rows.
    """
    known: list[str] = []
    unknown: list[str] = []
    for pid in ids:
        p = catalog.product(pid)
        (known if p is not None and p.category in categories else unknown).append(pid)
    out: list[Scored] = []
    f_p = catalog.embeddings(known)
    for n, pid in enumerate(known):
        cat = catalog.product(pid).category  # type: ignore[union-attr]
        out.extend(_scored([pid], cat, emb, categories.index(cat), f_p[n : n + 1]))
    return out, unknown


def similar(
    catalog: CatalogIndex,
    vector: np.ndarray,
    category: str,
    k: int,
    exclude: Iterable[str] = (),
    flt: ProductFilter = DEFAULT_FILTER,
    attributes: CatalogAttributes | None = None,
) -> list[Similar]:
    """Nearest products of ``category`` that pass ``flt`` to a product embedding (D,), by
    squared distance."""
    cat = catalog.category(category)
    attrs = attributes if attributes is not None else catalog.attributes
    mask = flt.mask(attrs.category(category), cat.row, tuple(exclude))
    rows = [int(r) for r in cat.nearest(vector, k, mask=mask)]
    v = vector.astype(np.float64)
    dist = ((cat.emb[rows].astype(np.float64) - v[None, :]) ** 2).sum(axis=1)
    order = np.argsort(dist, kind="stable")
    return [Similar(cat.ids[rows[i]], category, float(dist[i])) for i in order]


def similar_to_product(
    catalog: CatalogIndex,
    pid: str,
    k: int,
    flt: ProductFilter = DEFAULT_FILTER,
    attributes: CatalogAttributes | None = None,
) -> list[Similar]:
    """Nearest other products of the same category as catalog product ``pid``."""
    p = catalog.product(pid)
    if p is None:
        raise KeyError(f"unknown product id {pid!r}")
    vector = catalog.embeddings([pid])[0]
    return similar(catalog, vector, p.category, k, [pid], flt, attributes)
