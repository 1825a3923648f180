"""Index benchmark: catalog build time, and exact vs approximate search at 5k, 100k and 1M.

Synthetic unit vectors (128-d, or ``--dim``: an ensemble of N members is N x 128) come from
``tests/factories.py: synthetic_unit_vectors`` (Gaussian with a power-law spectrum, std of
principal axis j = j^-0.5, randomly rotated, normalized; queries are independent draws of the
same distribution). Each query runs alone, through the
serving path (``CategoryIndex.nearest``: FAISS search plus exact re-ranking of approximate
candidates); recall@10 is measured against exact search; memory is the serialized FAISS index
plus the float32 embeddings kept for re-scoring.

    python bench/bench_index.py --artifacts artifacts --data ../shared/stl-fashion
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from factories import synthetic_unit_vectors  # noqa: E402

from index.build import build_index  # noqa: E402
from index.search import (  # noqa: E402
    DEFAULT_CANDIDATES,
    DEFAULT_NPROBE,
    FLAT,
    IVFPQ,
    CategoryIndex,
    make_index,
)
from index.store import IndexStore  # noqa: E402
from runtime.artifacts import MANIFEST_FILE, REQUIRED_FILES  # noqa: E402
from runtime.encoder import OnnxEncoder  # noqa: E402

log = logging.getLogger("bench_index")
K = 10


def catalog_build(artifacts: Path, data: Path) -> dict[str, object]:
    """Build the index of ``data`` from scratch with the artifacts' encoders, in a temp copy."""
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "artifacts"
        art.mkdir()
        for name in (*REQUIRED_FILES, MANIFEST_FILE):
            shutil.copy(artifacts / name, art / name)
        encoder = OnnxEncoder.from_artifacts(art)
        started = time.perf_counter()
        report = build_index(IndexStore.for_artifacts(art), encoder, data)
        seconds = time.perf_counter() - started
    return {
        "products": sum(report.counts.values()),
        "skipped": len(report.skipped),
        "seconds": round(seconds, 1),
        "images_per_s": round(sum(report.counts.values()) / seconds, 1),
        "backbone": encoder.manifest["backbone"],
        "providers": encoder.providers,
    }


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k that was found."""
    hits = [len(set(a) & set(b)) for a, b in zip(found.tolist(), truth.tolist(), strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


def _latencies(
    cat: CategoryIndex, queries: np.ndarray, candidates: int
) -> tuple[list[float], np.ndarray]:
    lat = []
    found = np.zeros((len(queries), K), np.int64)
    for n, q in enumerate(queries):
        started = time.perf_counter()
        rows = cat.nearest(q, K, candidates)
        lat.append(time.perf_counter() - started)
        found[n, : len(rows)] = rows
    return lat, found


def search_bench(
    n: int, n_queries: int, nprobes: list[int], candidates: list[int], dim: int = 128
) -> list[dict[str, object]]:
    """Rows of the table for one database size."""
    started = time.perf_counter()
    emb = synthetic_unit_vectors(n, dim, seed=1)
    queries = synthetic_unit_vectors(n_queries, dim, seed=2)
    log.info("%d vectors generated in %.1f s", n, time.perf_counter() - started)
    ids = [str(i) for i in range(n)]
    rows: list[dict[str, object]] = []
    truth: np.ndarray | None = None
    for kind in (FLAT, IVFPQ):
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds use every core
        started = time.perf_counter()
        index = make_index(emb, kind)
        build_s = time.perf_counter() - started
        mem_mb = (faiss.serialize_index(index).nbytes + emb.nbytes) / 1e6
        faiss.omp_set_num_threads(1)  # one query at a time, one thread: what a request gets
        cat = CategoryIndex("bench", ids, emb, index, kind)
        settings = [(p, c) for p in nprobes for c in candidates] if kind == IVFPQ else [(0, 0)]
        for nprobe, cand in settings:
            if kind == IVFPQ:
                faiss.extract_index_ivf(index).nprobe = nprobe
            _latencies(cat, queries[:20], cand)  # warm-up
            lat, found = _latencies(cat, queries, cand)
            if truth is None:
                truth = found
            recall = recall_at_k(found, truth)
            name = kind
            if kind == IVFPQ:
                nlist = faiss.extract_index_ivf(index).nlist
                name = f"{kind} nlist={nlist} nprobe={nprobe} cand={cand}"
            row = {
                "n": n,
                "dim": dim,
                "index": name,
                "build_s": round(build_s, 1),
                "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3),
                "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3),
                "recall@10": round(recall, 4),
                "mem_mb": round(mem_mb, 1),
            }
            log.info("%s", row)
            rows.append(row)
    return rows


def _table(rows: list[dict[str, object]]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, help="exported model; times the catalog build")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "stl-fashion")
    p.add_argument("--sizes", type=int, nargs="+", default=[5_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--nprobe", type=int, nargs="+", default=[DEFAULT_NPROBE])
    p.add_argument("--candidates", type=int, nargs="+", default=[DEFAULT_CANDIDATES])
    p.add_argument("--dim", type=int, default=128, help="embedding size (members x 128)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result: dict[str, object] = {"cpus": os.cpu_count(), "faiss": faiss.__version__}
    if args.artifacts is not None:
        result["catalog_build"] = catalog_build(args.artifacts, args.data)
        print(json.dumps(result["catalog_build"]))
    rows: list[dict[str, object]] = []
    for n in args.sizes:
        rows += search_bench(n, args.queries, args.nprobe, args.candidates, args.dim)
    result["search"] = rows
    print(_table(rows))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
