"""``ctl quickstart``: the whole pipeline (features, train, export, index), then serve.

Each step runs through the same ``main(argv)`` as its own ``ctl`` command and is skipped when
its output is current: a stamp file records a digest of the step's inputs, and a step whose
stamp matches and whose output exists is not run again. Serving sits above training, so the
serving step comes in as a callable (``cli.py`` passes ``service.main.main``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

from runtime.artifacts import MANIFEST_FILE, digest, sha256_file
from runtime.atomic import write_json
from runtime.options import Options, option
from training.config import TrainingSettings

log = logging.getLogger(__name__)

Serve = Callable[[list[str]], int]
"""The serving step: ``ctl serve``'s ``main(argv)``."""
RELEASE_BASE = "https://raw.githubusercontent.com/kang205/STL-Dataset/master"


def _argv(**flags: object) -> list[str]:
    """A step's ``--flag value`` words, ``None`` values left out (``work_dir``: ``--work-dir``)."""
    pairs = ((f"--{k.replace('_', '-')}", str(v)) for k, v in flags.items() if v is not None)
    return [word for pair in pairs for word in pair]


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

    pairs, categories = release / "fashion.json", release / "fashion-cat.json"
    if download.main(_argv(pairs=pairs, categories=categories, out=target)):
        raise SystemExit("quickstart: download failed")
    return target


class QuickstartOptions(Options, prog="ctl quickstart", settings=TrainingSettings, summary=__doc__):
    data: Path | None = option(None, "STL data dir (default: shared)")
    work: Path = option(help="features, runs and stamps", setting="work_dir")
    artifacts: Path = option(help="exported encoders and index", setting="artifacts_dir")
    backbone: str = option(help="frozen backbone", setting="backbone")
    epochs: int | None = option(None, "default: the trainer's")
    seed: int = option(help="ctl train --seed", setting="seed")
    host: str | None = option(None, "default: the service's (CTL_HOST)")
    port: int | None = option(None, "default: the service's (CTL_PORT)")
    no_serve: bool = option(False, "stop after building the index")


def main(argv: list[str], serve: Serve | None = None) -> int:
    """Build everything that is not current, then ``serve`` (unless ``--no-serve`` or none)."""
    settings = TrainingSettings()
    args = QuickstartOptions.parse(argv, settings)

    from index import cli as index_cli
    from model import export
    from training import features, train
    from training.calibration import calibration_images

    data = ensure_data(args.data, settings).resolve()
    work: Path = args.work
    cache = work / "features"
    run_dir = work / "runs" / "quickstart"
    artifacts: Path = args.artifacts
    stamps = work / "quickstart"

    feat_digest = digest("features", str(data), args.backbone)
    feat_argv = _argv(data=data, cache=cache, backbone=args.backbone)
    _run_step(stamps, "features", feat_digest, cache, features.main, feat_argv)

    train_argv = _argv(
        data=data,
        out=run_dir,
        cache=cache,
        backbone=args.backbone,
        seed=args.seed,
        epochs=args.epochs,
    )
    train_digest = digest(feat_digest, train_argv)
    _run_step(stamps, "train", train_digest, run_dir / "metrics.json", train.main, train_argv)

    export_digest = digest(
        "export", sha256_file(run_dir / "checkpoint.pt"), export.DEFAULT_PRECISION
    )
    export_argv = _argv(run=run_dir, out=artifacts)
    export_main = functools.partial(export.main, calibrate=calibration_images)
    _run_step(stamps, "export", export_digest, artifacts / MANIFEST_FILE, export_main, export_argv)

    index_digest = digest("index", sha256_file(artifacts / MANIFEST_FILE), str(data))
    index_argv = _argv(artifacts=artifacts, data=data, work_dir=work)
    current = artifacts / "index" / "CURRENT"
    _run_step(stamps, "index", index_digest, current, index_cli.build_main, index_argv)

    if args.no_serve or serve is None:
        log.info("quickstart: artifacts and index ready in %s", artifacts)
        return 0
    os.environ.setdefault("CTL_SAMPLES_DIR", str(data / "images" / "scenes"))
    return serve(_argv(artifacts=artifacts, host=args.host, port=args.port))
