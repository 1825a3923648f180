"""Where a cache miss's time goes, stage by stage, in process: decoding, preparing (the resize
to the model input), the encoder (batch 1), the search and the exact re-ranking.

Two paths on the same photos, alternated photo by photo so both see the same machine load:
today's (full decoding, ``--today-artifacts``, the fp32 export) and the current one (reduced-
size decoding, ``--artifacts``, e.g. the int8 export with its index). Two photo sets: the STL
scene photos and phone photos made from them (``bench_service.phone_photos``: 12 MP,
quality-90 JPEG). What a request costs beyond these stages (HTTP, hashing, caches, queueing)
is the service's miss p50 from ``bench_service.py`` minus their sum.

    python bench/bench_miss_stages.py --artifacts artifacts --today-artifacts artifacts-fp32
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_service import phone_photos  # noqa: E402

from index.search import CatalogIndex, _scored  # noqa: E402
from index.store import IndexStore  # noqa: E402
from runtime.decode import decode_image  # noqa: E402
from runtime.encoder import OnnxEncoder  # noqa: E402

STAGES = ("decoding", "preparing", "encoder", "search", "rerank")


def stages(
    encoder: OnnxEncoder, catalog: CatalogIndex, photo: bytes, reduced: bool, category: str
) -> list[float]:
    """Seconds of each stage for one photo."""
    t = [time.perf_counter()]
    image = decode_image(photo, min_size=encoder.input_size if reduced else 0)
    t.append(time.perf_counter())
    prepared = encoder.prepare(image)
    t.append(time.perf_counter())
    (emb,) = encoder.embed_scenes([prepared])
    t.append(time.perf_counter())
    row = encoder.categories.index(category)
    cat = catalog.category(category)
    rows = [int(r) for r in cat.nearest(emb.f_s + emb.attention[row] @ emb.f_i, 10)]
    t.append(time.perf_counter())
    scored = _scored([cat.ids[r] for r in rows], category, emb, row, cat.emb[rows])
    scored.sort(key=lambda s: s.d_star)
    t.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(t)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, required=True, help="with an index")
    parser.add_argument("--today-artifacts", type=Path, required=True, help="the fp32 export")
    default_scenes = REPO.parent / "shared" / "stl-fashion" / "images" / "scenes"
    parser.add_argument("--scenes", type=Path, default=default_scenes)
    parser.add_argument("--photos", type=int, default=24, help="photos of each set")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    args = parser.parse_args(argv)
    files = sorted(args.scenes.glob("*.jpg"))[: args.photos]
    sets = {"STL": [f.read_bytes() for f in files], "phone": phone_photos(files, 12.0)}
    now = OnnxEncoder.from_artifacts(args.artifacts, device="cpu", threads=args.threads)
    today = OnnxEncoder.from_artifacts(args.today_artifacts, device="cpu", threads=args.threads)
    catalog = IndexStore.for_artifacts(args.artifacts).load(device="cpu")
    category = catalog.categories[0]
    print(f"{len(files)} photos a set, category {category!r}, {args.threads} thread(s); "
          "median ms a photo (today: full decoding + the fp32 export)")  # fmt: skip
    header = "| stage | " + " | ".join(f"{s} {p}" for s in sets for p in ("today", "now")) + " |"
    table: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    for photos in sets.values():
        runs: dict[str, list[list[float]]] = {"today": [], "now": []}
        for photo in photos:
            runs["today"].append(stages(today, catalog, photo, False, category))
            runs["now"].append(stages(now, catalog, photo, True, category))
        for path in ("today", "now"):
            for i, stage in enumerate(STAGES):
                table[stage].append(1000 * statistics.median(r[i] for r in runs[path]))
            table["total"].append(1000 * statistics.median(sum(r) for r in runs[path]))
    lines = [header, "|---|" + "---:|" * (2 * len(sets))]
    lines += [f"| {s} | " + " | ".join(f"{v:.1f}" for v in vs) + " |" for s, vs in table.items()]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
