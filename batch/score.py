"""``ctl batch-score``: score an archive of scene photos against the catalog as a Ray Data job.

For offline work far beyond one request (a night's archive of millions of photos). The same
code runs on a local Ray (the default) and on a cluster (``--address``). The encoder runs in an
actor pool, one ONNX session per actor on its share of the cores, in batches of the encoder's
size; the actor then ranks each scene with the scoring function the HTTP endpoints use
(``index.search.recommend``), so job and service give the same top-k and distances, and writes
the batch's rows (``write_batch``). A photo
that cannot be read becomes a row of the errors output, never a failed job. Ray is an optional
extra (``.[batch]``): the API image does without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from index.config import IndexOptions, IndexSettings
from index.filters import FilterError, ProductFilter
from index.search import recommend, set_search_threads
from index.store import IndexStore
from runtime.artifacts import MANIFEST_FILE
from runtime.decode import DecodeError, decode_image
from runtime.encoder import OnnxEncoder
from runtime.errors import quote
from runtime.options import option

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
RESULT_COLUMNS = ("scene", "category", "rank", "product", "d_star", "d_global", "d_local")


def read_inputs(source: Path) -> list[dict[str, str]]:
    """Rows ``{"scene": path, "categories": "A,B" or ""}`` from a folder (every image below
    it), a Parquet file (column ``scene``, optional ``category``) or a list file (one path a
    line, optionally a tab and comma-separated categories). Relative paths are taken from the
    list file's folder."""
    if source.is_dir():
        return [
            {"scene": str(p), "categories": ""}
            for p in sorted(source.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES
        ]
    if source.suffix == ".parquet":
        table = pq.read_table(source).to_pylist()
        return [{"scene": str(r["scene"]), "categories": r.get("category") or ""} for r in table]
    rows = []
    for line in source.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, _, cats = line.partition("\t")
        full = Path(path.strip())
        rows.append({"scene": str(full if full.is_absolute() else source.parent / full),
                     "categories": cats.strip()})  # fmt: skip
    return rows


def decode_scene(path: Path, min_size: int, max_pixels: int, max_bytes: int) -> Image.Image | str:
    """The photo as the service decodes an upload (the one decoder, ``runtime.decode``, with the
    service's limits: ``max_bytes`` of file, ``max_pixels``, its formats), or why it cannot be
    read: job and service then see the same pixels and refuse the same files."""
    try:
        if path.stat().st_size > max_bytes:
            return f"unreadable: {path.name}: the file is over the limit of {max_bytes} bytes"
        return decode_image(path.read_bytes(), max_pixels, min_size, path.name)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except DecodeError as exc:
        return f"unreadable: {exc}"


class SceneScorer:
    """One actor: its own encoder session and catalog; a batch of paths in, its ranked rows and
    errors written, their counts out."""

    def __init__(
        self,
        artifacts: str,
        out: str,
        categories: Sequence[str],
        k: int,
        threads: int,
        device: str,
        encoder_batch: int,
        max_pixels: int,
        max_bytes: int,
        filter_json: str = "",
    ) -> None:
        self.out = Path(out)
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.filter = ProductFilter.parse(filter_json)
        self.encoder_batch = encoder_batch
        self.encoder = OnnxEncoder.from_artifacts(Path(artifacts), device=device, threads=threads)
        # FAISS on every core woke the OpenMP threads of both actors for each of a scene's
        # searches: a third of the actor's time went there (docs/performance.md).
        set_search_threads(threads)
        self.catalog = IndexStore.for_artifacts(Path(artifacts)).load(device=device)
        served = [c for c in self.catalog.categories if c in self.encoder.categories]
        self.categories = list(categories) or served
        self.k = k

    def _wanted(self, listed: str) -> tuple[list[str], str]:
        names = [c.strip() for c in listed.split(",") if c.strip()] or self.categories
        unknown = [c for c in names if c not in self.catalog.categories]
        return [c for c in names if c not in unknown], ", ".join(unknown)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[int]]:
        """Scores the batch and writes its rows (``write_batch``); returns the counts."""
        out: dict[str, list[Any]] = {c: [] for c in (*RESULT_COLUMNS, "error")}

        nan3 = (np.nan, np.nan, np.nan)

        def row(scene: str, error: str = "", category: str = "", rank: int = -1,
                product: str = "", d: tuple[float, float, float] = nan3) -> None:  # fmt: skip
            for key, value in zip(
                (*RESULT_COLUMNS, "error"),
                (scene, category, rank, product, *d, error),
                strict=True,
            ):
                out[key].append(value)

        good: list[tuple[str, list[str]]] = []
        images = []
        for scene, listed in zip(batch["scene"], batch["categories"], strict=True):
            loaded = decode_scene(
                Path(str(scene)), self.encoder.input_size, self.max_pixels, self.max_bytes
            )
            if isinstance(loaded, str):
                row(str(scene), error=loaded)
                continue
            wanted, unknown = self._wanted(str(listed))
            if unknown:
                row(str(scene), error=f"unknown categories: {unknown}")
            good.append((str(scene), wanted))
            images.append(self.encoder.prepare(loaded))
        # The encoder in calls of ``encoder_batch`` scenes: on a CPU, 4 at a time cost ~30% less
        # CPU per scene than the whole 64 in one call (docs/performance.md).
        embeddings = [
            emb
            for i in range(0, len(images), self.encoder_batch)
            for emb in self.encoder.embed_scenes(images[i : i + self.encoder_batch])
        ]
        for (scene, wanted), emb in zip(good, embeddings, strict=True):
            for category in wanted:
                cat_idx = self.encoder.categories.index(category)
                ranked = recommend(self.catalog, emb, cat_idx, category, self.k, flt=self.filter)
                for rank, s in enumerate(ranked):
                    row(scene, category=category, rank=rank + 1, product=s.id,
                        d=(s.d_star, s.d_global, s.d_local))  # fmt: skip
        rows, errors = write_batch(pa.table(out), self.out, [str(s) for s in batch["scene"]])
        return {"scenes": [len(batch["scene"])], "rows": [rows], "errors": [errors]}


def write_batch(table: pa.Table, out: Path, scenes: list[str]) -> tuple[int, int]:
    """The batch's ranked rows to ``out/results/``, its unreadable photos (``scene, error``) to
    ``out/errors/``, as Parquet; the counts of each.

    The actor that scored the batch writes it: a write stage after the actors needs worker
    processes of its own, and on 2 cores Ray started a fresh one for nearly every block
    (docs/performance.md). The file is named after the batch's scenes, so a retried batch
    rewrites its own file."""
    name = hashlib.sha256("\n".join(scenes).encode()).hexdigest()[:20] + ".parquet"
    ok = pc.equal(table["error"], "")
    results = table.filter(ok).drop_columns(["error"])
    errors = table.filter(pc.invert(ok)).select(["scene", "error"])
    for part, rows in (("results", results), ("errors", errors)):
        if rows.num_rows:
            pq.write_table(rows, out / part / name)
    return results.num_rows, errors.num_rows


class OptionError(ValueError):
    """A ``k`` or category the service would refuse: the job does not start."""


def check_options(artifacts: Path, categories: Sequence[str], k: int, max_k: int) -> None:
    """The service's checks of ``k`` (1..max_k) and of the category names, before any work."""
    if not 1 <= k <= max_k:
        raise OptionError(f"k must be between 1 and {max_k}, got {k}")
    try:  # the categories the service answers for: the current index's that the model knows
        model = json.loads((artifacts / MANIFEST_FILE).read_text())["categories"]
        store = IndexStore.for_artifacts(artifacts)
        version = store.current()
        if version is None:
            raise OptionError(f"no index version published under {store.root}")
        served = [c for c in store.manifest(version)["categories"] if c in model]
    except (OSError, ValueError, KeyError) as exc:
        raise OptionError(f"cannot read the artifacts in {artifacts}: {exc}") from None
    unknown = [c for c in categories if c not in served]
    if unknown:
        raise OptionError(
            f"unknown categories {', '.join(quote(c) for c in unknown)}; "
            f"valid categories: {', '.join(served)}"
        )


def run(
    inputs: list[dict[str, str]],
    artifacts: Path,
    out: Path,
    categories: Sequence[str] = (),
    k: int = 10,
    actors: int = 0,
    threads: int = 1,
    batch_size: int = 64,
    device: str = "cpu",
    address: str | None = None,
    encoder_batch: int = 4,
    filter_json: str = "",
) -> dict[str, Any]:
    """Score ``inputs`` on Ray; write ``out/results/*.parquet`` and ``out/errors/*.parquet``.

    ``batch_size`` scenes go to an actor at once and into one file per output; the actor runs
    the encoder on ``encoder_batch`` of them at a time (docs/performance.md).

    ``actors`` encoder actors of ``threads`` ONNX threads each (0: one per ``threads`` cores).
    The photos are held to the service's limits (``CTL_MAX_UPLOAD_BYTES``,
    ``CTL_MAX_IMAGE_PIXELS``); ``k`` and ``categories`` are checked as the service checks them
    (``CTL_MAX_K``; :class:`OptionError`).
    ``filter_json``: which products may be recommended (``index.filters.ProductFilter``, as
    the HTTP routes' ``filter`` field; empty: in-stock products only).
    """
    import ray

    settings = IndexSettings()
    check_options(artifacts, categories, k, settings.max_k)

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
    start = time.perf_counter()
    for part in ("results", "errors"):
        (out / part).mkdir(parents=True, exist_ok=True)
    # Blocks of about one batch each: Ray's default blocks (~13 rows here) were bundled into
    # 65-row tasks that ran a 64-scene batch and a 1-scene one (78 encoder calls for 41 batches).
    blocks = max(1, math.ceil(len(inputs) / batch_size))
    ds = ray.data.from_items(inputs, override_num_blocks=blocks).map_batches(
        SceneScorer,
        fn_constructor_kwargs={
            "artifacts": str(artifacts.resolve()),
            "out": str(out.resolve()),
            "categories": list(categories),
            "k": k,
            "threads": threads,
            "device": device,
            "encoder_batch": encoder_batch,
            "max_pixels": settings.max_image_pixels,
            "max_bytes": settings.max_upload_bytes,
            "filter_json": filter_json,
        },
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=threads,
    )
    counts = ds.take_all()  # one small row per batch: the rows are already written
    seconds = time.perf_counter() - start
    report = {
        "scenes": len(inputs),
        "errors": sum(c["errors"] for c in counts),
        "rows": sum(c["rows"] for c in counts),
        "seconds": round(seconds, 2),
        "scenes_per_s": round(len(inputs) / seconds, 2),
        "actors": actors,
        "out": str(out),
    }
    log.info("batch-score: %s", report)
    return report


class BatchOptions(IndexOptions, prog="ctl batch-score", summary=__doc__):
    inputs: Path = option(help="a folder of photos, a .parquet or a list file", positional=True)
    out: Path = option(help="output folder (Parquet)")
    categories: str = option("all", "'all' or a comma-separated list")
    k: int = option(10, "products per scene and category")
    actors: int = option(0, "encoder actors (0: one per core)")
    threads: int = option(1, "ONNX threads per actor")
    batch_size: int = option(64, "scenes per actor call and file")
    encoder_batch: int = option(4, "scenes per encoder call (4 suits a CPU; more for a GPU)")
    device: str = option("cpu", "cpu | cuda | auto")
    address: str | None = option(None, "a Ray cluster (default: a local Ray)")
    filter: str = option(
        "",
        "JSON, as the HTTP routes' filter field: in_stock_only (default true), "
        "exclude, brand, attributes, price_min, price_max",
    )


def main(argv: list[str]) -> int:
    """``ctl batch-score``: parse the flags and run the job; prints a JSON report."""
    args = BatchOptions.parse(argv)
    try:
        ProductFilter.parse(args.filter)
    except FilterError as exc:
        log.error("ctl batch-score: --filter: %s", exc)
        return 2
    try:
        import ray  # noqa: F401
    except ImportError:
        log.error("ctl batch-score needs Ray: pip install -r requirements/batch.txt")
        return 1
    if not args.inputs.exists():
        log.error("%s does not exist", args.inputs)
        return 1
    cats = [] if args.categories == "all" else [c.strip() for c in args.categories.split(",")]
    if args.categories != "all" and not all(cats):
        log.error(
            "ctl batch-score: --categories has an empty name: 'all' or a comma-separated list"
        )
        return 2
    try:
        report = run(
            read_inputs(args.inputs), args.artifacts, args.out, cats, args.k, args.actors,
            args.threads, args.batch_size, args.device, args.address, args.encoder_batch,
            args.filter,
        )  # fmt: skip
    except OptionError as exc:
        log.error("ctl batch-score: %s", exc)
        return 2
    sys.stdout.write(json.dumps(report) + "\n")  # the result on stdout, like `ctl index`
    return 0
