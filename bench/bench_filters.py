"""Filter benchmark: filtered p50 / unfiltered p50 of one recommendation, in the same run, at 50,
10 and 1 % selectivity, with recall@10 against the exact filtered ranking. Target: <= 1.5 at 10 %.

Two catalogs: the shared catalog's largest category (``--artifacts``: its current index version,
flat below the ANN threshold), queried with real scene embeddings (``--data``: photos of
``images/scenes`` through the exported encoder); and ``--synthetic N`` (default 1M) 128-d
vectors in an IVF-PQ index (``tests/factories.py: synthetic_unit_vectors``, queries drawn from
the same distribution). The filter is the default one, in stock only, with a random
``selectivity`` share of the products in stock; the unfiltered baseline has all in stock (no
mask). Filtered and unfiltered calls alternate, query by query, through ``index.search.recommend``
(mask, FAISS with an ``IDSelectorBitmap`` or exact search over the passing rows, exact
re-scoring), on one FAISS thread as the service runs it.

    python bench/bench_filters.py --artifacts artifacts --data ../shared/stl-fashion
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from factories import synthetic_unit_vectors  # noqa: E402

from index.attributes import CatalogAttributes, CategoryAttributes  # noqa: E402
from index.search import (  # noqa: E402
    IVFPQ,
    CatalogIndex,
    CategoryIndex,
    make_index,
    recommend,
    set_search_threads,
)
from index.store import IndexStore  # noqa: E402
from runtime.encoder import OnnxEncoder, SceneEmbedding  # noqa: E402

log = logging.getLogger("bench_filters")
SELECTIVITIES = (0.5, 0.1, 0.01)
K = 10


def _stock(catalog: CatalogIndex, category: str, in_stock: np.ndarray) -> CatalogAttributes:
    """Attributes where only the ``in_stock`` rows of ``category`` are in stock."""
    n = len(in_stock)
    cats = {
        name: CategoryAttributes(1, np.ones(catalog.count(name), bool), *_nan(catalog.count(name)))
        for name in catalog.categories
    }
    cats[category] = CategoryAttributes(2, in_stock, *_nan(n))
    return CatalogAttributes(2, {}, cats, catalog.locate)


def _nan(n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    return np.full(n, np.nan), np.full(n, np.nan), {}


def run(
    catalog: CatalogIndex, category: str, cat_idx: int, queries: list[SceneEmbedding], seed: int
) -> list[dict[str, object]]:
    cat = catalog.category(category)
    unfiltered = _stock(catalog, category, np.ones(len(cat), bool))
    rows = []
    for selectivity in SELECTIVITIES:
        in_stock = np.random.default_rng(seed).random(len(cat)) < selectivity
        filtered = _stock(catalog, category, in_stock)
        passing = np.flatnonzero(in_stock)
        passing_emb = cat.emb[passing]  # the exact ranking's operand, gathered once
        times: dict[str, list[float]] = {"filtered": [], "unfiltered": []}
        hits = 0
        for emb in queries:
            for name, attrs in (("unfiltered", unfiltered), ("filtered", filtered)):
                start = time.perf_counter()
                found = recommend(catalog, emb, cat_idx, category, K, attributes=attrs)
                times[name].append(time.perf_counter() - start)
                if name == "filtered":
                    q = emb.f_s + emb.attention[cat_idx] @ emb.f_i
                    scores = np.einsum("ij,j->i", passing_emb, q.astype(np.float32))
                    exact = passing[np.argsort(-scores, kind="stable")[:K]]
                    hits += len({cat.ids[r] for r in exact} & {s.id for s in found})
                    assert len(found) == min(K, len(passing))
        p50 = {name: statistics.median(t) for name, t in times.items()}
        rows.append(
            {
                "catalog": f"{category} ({cat.kind}, {len(cat)} products)",
                "selectivity": selectivity,
                "passing": len(passing),
                "unfiltered_p50_ms": round(1000 * p50["unfiltered"], 3),
                "filtered_p50_ms": round(1000 * p50["filtered"], 3),
                "ratio": round(p50["filtered"] / p50["unfiltered"], 2),
                "recall@10": round(hits / (K * len(queries)), 4),
            }
        )
        log.info("%s", rows[-1])
    return rows


def shared_catalog(artifacts: Path, data: Path, n_queries: int) -> list[dict[str, object]]:
    catalog = IndexStore.for_artifacts(artifacts).load(device="cpu")
    encoder = OnnxEncoder.from_artifacts(artifacts, device="cpu")
    category = max(catalog.categories, key=catalog.count)
    scenes = sorted((data / "images" / "scenes").glob("*.jpg"))[:n_queries]
    images = [encoder.prepare(Image.open(p).convert("RGB")) for p in scenes]
    queries = [e for i in range(0, len(images), 8) for e in encoder.embed_scenes(images[i : i + 8])]
    return run(catalog, category, encoder.categories.index(category), queries, seed=0)


def synthetic(n: int, n_queries: int, dim: int = 128) -> list[dict[str, object]]:
    emb = synthetic_unit_vectors(n, dim, seed=1)
    ids = [str(i) for i in range(n)]
    start = time.perf_counter()
    index = make_index(emb, IVFPQ)
    log.info("IVF-PQ index of %d vectors built in %.0f s", n, time.perf_counter() - start)
    cat = CategoryIndex("synthetic", ids, emb, index, IVFPQ)
    catalog = CatalogIndex("bench", "bench", dim, {"synthetic": cat}, {})
    q = synthetic_unit_vectors(n_queries, dim, seed=2)
    queries = [SceneEmbedding(v, v[None, :] * 0, np.ones((1, 1), np.float32)) for v in q]
    return run(catalog, "synthetic", 0, queries, seed=0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--artifacts", type=Path, help="the shared catalog's artifacts (flat part)")
    p.add_argument("--data", type=Path, default=Path("../shared/stl-fashion"))
    p.add_argument("--synthetic", type=int, default=1_000_000, help="IVF-PQ vectors (0: skip)")
    p.add_argument("--queries", type=int, default=100)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    set_search_threads(1)
    rows = []
    if args.artifacts is not None:
        rows += shared_catalog(args.artifacts, args.data, args.queries)
    if args.synthetic:
        rows += synthetic(args.synthetic, args.queries)
    for row in rows:
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
