"""The ``ctl`` command: one entry point that dispatches to each step's ``main(argv)``.

Subcommands import their module lazily so that ``ctl serve`` never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Sequence

# command words -> "module:function"; each function takes the remaining argv and returns an int.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("download",): ("training.download:main", "fetch STL images from the released pairs file"),
    ("data", "stats"): ("training.stats:main", "counts of pairs, images, crops and drops"),
    ("data", "import"): ("training.data_import:main", "a shop's looks and products as data"),
    ("features",): ("training.features:main", "cache frozen-backbone features"),
    ("train",): ("training.train:main", "train the CTL heads on cached features"),
    ("evaluate",): ("training.evaluate:main", "metrics, baselines, pictures, report"),
    ("export",): ("cli:export", "export the encoders to ONNX (fp32 or int8)"),
    ("index", "build"): ("index.cli:build_main", "embed the catalog into a new index version"),
    ("index", "add"): ("index.cli:add_main", "add products as a new index version"),
    ("index", "remove"): ("index.cli:remove_main", "remove products as a new index version"),
    ("index", "info"): ("index.cli:info_main", "show index versions"),
    ("catalog", "set"): ("index.catalog_cli:set_main", "set a product's attributes (stock, ...)"),
    ("catalog", "import"): ("index.catalog_cli:import_main", "import a product table"),
    ("serve",): ("service.main:main", "run the HTTP service"),
    ("batch-score",): ("batch.score:main", "score an archive of scenes (Ray Data job)"),
    ("quickstart",): ("cli:quickstart", "features, train, export, index, then serve"),
}


def _serve(argv: list[str]) -> int:
    from service import main as service_main

    return service_main.main(argv)


def export(argv: list[str]) -> int:
    """``ctl export``: the model layer's exporter, given training's calibration images (int8),
    which it cannot import itself."""
    from model.export import main as export_main
    from training.calibration import calibration_images

    return export_main(argv, calibrate=calibration_images)


def quickstart(argv: list[str]) -> int:
    """``ctl quickstart``: training's pipeline, then the service (which sits above training)."""
    from training import quickstart as pipeline

    return pipeline.main(argv, serve=_serve)


def _usage() -> str:
    lines = ["usage: ctl COMMAND [ARGS...]", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16} {help_text}")
    lines.append("")
    lines.append("Run 'ctl COMMAND --help' for a command's options.")
    return "\n".join(lines)


def _resolve(argv: Sequence[str]) -> tuple[Callable[[list[str]], int], list[str]] | None:
    for n in (2, 1):
        key = tuple(argv[:n])
        if key in COMMANDS:
            module_name, func_name = COMMANDS[key][0].split(":")
            func = getattr(importlib.import_module(module_name), func_name)
            return func, list(argv[n:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage() + "\n")
        return 0
    resolved = _resolve(args)
    if resolved is None:
        sys.stderr.write(f"ctl: unknown command {' '.join(args[:2])!r}\n\n{_usage()}\n")
        return 2
    func, rest = resolved
    return int(func(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
