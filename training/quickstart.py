"""``ctl quickstart``: the whole pipeline (features, train, export, index), then serve.

Each step runs through the same ``main(argv)`` as its own ``ctl`` command and is skipped when
its output is current: a stamp file records a digest of the step's inputs, and a step whose
stamp matches and whose output exists is not run again. Serving sits above training, so the
serving step comes in as a callable (``cli.py`` passes ``service.main.main``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

from index.atomic import write_json
from model.runtime import sha256_file
from training.config import TrainingSettings
from training.outfits import outfits_available

log = logging.getLogger(__name__)

Serve = Callable[[list[str]], int]
"""The serving step: ``ctl serve``'s ``main(argv)``."""
RELEASE_BASE = "https://raw.githubusercontent.com/kang205/STL-Dataset/master"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _run_step(
    stamps: Path,
    name: str,
    digest: str,
    output: Path,
    func: Callable[[list[str]], int],
    argv: list[str],
) -> None:
    """Run ``ctl NAME ARGV`` unless ``output`` exists and the step's stamp (a digest of its
    inputs, kept in ``stamps``) matches; record the stamp after a success."""
    stamp = stamps / f"{name}.json"
    with contextlib.suppress(OSError, ValueError):
        if output.exists() and json.loads(stamp.read_text()).get("digest") == digest:
            log.info("quickstart: %s is current (%s), skipped", name, output)
            return
    log.info("quickstart: %s: ctl %s %s", name, name, " ".join(argv))
    rc = func(argv)
    if rc:
        raise SystemExit(f"quickstart: step {name!r} failed with exit code {rc}")
    write_json(stamp, {"digest": digest})


def ensure_data(data: Path | None, settings: TrainingSettings) -> Path:
    """The data directory to use: the given one, the configured one, or a fresh download."""
    if data is not None:
        if not (data / "fashion.json").is_file():
            raise SystemExit(f"quickstart: {data} has no fashion.json (an STL data directory?)")
        return data
    if (settings.data_dir / "fashion.json").is_file():
        return settings.data_dir
    target = settings.work_dir / "stl-fashion"
    log.info("quickstart: no local data; downloading the released STL pairs into %s", target)
    release = settings.work_dir / "release"
    release.mkdir(parents=True, exist_ok=True)
    for name in ("fashion.json", "fashion-cat.json"):
        if not (release / name).is_file():
            urllib.request.urlretrieve(f"{RELEASE_BASE}/{name}", release / name)
    from training import download

    rc = download.main(
        [
            "--pairs",
            str(release / "fashion.json"),
            "--categories",
            str(release / "fashion-cat.json"),
            "--out",
            str(target),
        ]
    )
    if rc:
        raise SystemExit("quickstart: download failed")
    return target


def main(argv: list[str], serve: Serve | None = None) -> int:
    """Build everything that is not current, then ``serve`` (unless ``--no-serve`` or none)."""
    settings = TrainingSettings()
    parser = argparse.ArgumentParser(prog="ctl quickstart", description=__doc__)
    parser.add_argument("--data", type=Path, default=None, help="STL data dir (default: shared)")
    parser.add_argument("--work", type=Path, default=settings.work_dir)
    parser.add_argument("--artifacts", type=Path, default=settings.artifacts_dir)
    parser.add_argument("--backbone", default=settings.backbone)
    parser.add_argument("--epochs", type=int, default=None, help="default: the trainer's")
    parser.add_argument("--seed", type=int, default=settings.seed)
    parser.add_argument("--host", default=None, help="default: the service's (CTL_HOST)")
    parser.add_argument("--port", type=int, default=None, help="default: the service's (CTL_PORT)")
    parser.add_argument(
        "--outfits",
        type=Path,
        default=settings.outfits_dir,
        help="stylist outfits directory (default: $CTL_OUTFITS_DIR or ../shared/mango-outfits)",
    )
    parser.add_argument("--no-serve", action="store_true", help="stop after building the index")
    args = parser.parse_args(argv)

    from index import cli as index_cli
    from model import export
    from training import features, train

    data = ensure_data(args.data, settings).resolve()
    work: Path = args.work
    cache = work / "features"
    run_dir = work / "runs" / "quickstart"
    artifacts: Path = args.artifacts
    stamps = work / "quickstart"

    feat_digest = _digest("features", str(data), args.backbone)
    _run_step(
        stamps,
        "features",
        feat_digest,
        cache,
        features.main,
        ["--data", str(data), "--cache", str(cache), "--backbone", args.backbone],
    )

    train_argv = [
        "--data",
        str(data),
        "--out",
        str(run_dir),
        "--cache",
        str(cache),
        "--backbone",
        args.backbone,
        "--seed",
        str(args.seed),
    ]
    if args.epochs is not None:
        train_argv += ["--epochs", str(args.epochs)]
    outfits = args.outfits.resolve()
    train_argv += ["--outfits", str(outfits)]
    _run_step(
        stamps,
        "train",
        _digest(feat_digest, train_argv, outfits_available(outfits)),
        run_dir / "metrics.json",
        train.main,
        train_argv,
    )

    checkpoint = sha256_file(run_dir / "checkpoint.pt")
    _run_step(
        stamps,
        "export",
        _digest("export", checkpoint),
        artifacts / "manifest.json",
        export.main,
        ["--run", str(run_dir), "--out", str(artifacts)],
    )

    manifest = sha256_file(artifacts / "manifest.json")
    _run_step(
        stamps,
        "index",
        _digest("index", manifest, str(data)),
        artifacts / "index" / "CURRENT",
        index_cli.build_main,
        ["--artifacts", str(artifacts), "--data", str(data), "--work-dir", str(work)],
    )

    if args.no_serve or serve is None:
        log.info("quickstart: artifacts and index ready in %s", artifacts)
        return 0
    os.environ.setdefault("CTL_SAMPLES_DIR", str(data / "images" / "scenes"))
    serve_argv = ["--artifacts", str(artifacts)]
    serve_argv += ["--host", args.host] if args.host is not None else []
    serve_argv += ["--port", str(args.port)] if args.port is not None else []
    return serve(serve_argv)
