"""runtime/options.py: a command's parser derived from its options model."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import RuntimeSettings
from runtime.options import Options, option


class Demo(Options, prog="ctl demo"):
    table: Path = option(help="the input table", positional=True)
    work_dir: Path = option(help="where work goes", setting="work_dir")
    out: Path = option(help="output folder")
    epochs: int = option(20, "passes over the data", ge=1)
    rate: float = option(0.5, "share kept, in %", gt=0, le=1)
    mode: str = option("fast", "how to run", choices=("fast", "slow"))
    views: tuple[str, ...] = option(("a", "b"), "comma-separated views")
    seed: int | None = option(None, "default: the run's")
    sync: bool = option(False, "also remove what the table lacks")
    standardize: bool = option(True, "z-score the inputs")
    as_json: bool = option(False, "print JSON", flag="--json")


def test_parse_gives_the_typed_options(tmp_path: Path) -> None:
    opts = Demo.parse(["t.csv", "--out", str(tmp_path), "--epochs", "3", "--views", "x,y,"])
    assert opts == Demo(
        table=Path("t.csv"),
        work_dir=RuntimeSettings().work_dir,
        out=tmp_path,
        epochs=3,
        views=("x", "y"),
    )
    assert (opts.rate, opts.mode, opts.seed, opts.sync, opts.standardize) == (
        0.5,
        "fast",
        None,
        False,
        True,
    )
    flags = Demo.parse(["t", "--out", "o", "--sync", "--no-standardize", "--json", "--seed", "4"])
    assert (flags.sync, flags.standardize, flags.as_json, flags.seed) == (True, False, True, 4)


def test_help_shows_every_description_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        Demo.parse(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: ctl demo")
    assert "runtime/options.py" in text  # the description: the module's first docstring line
    for part in (
        "the input table",
        "--work-dir WORK_DIR where work goes (default: work)",
        "--epochs EPOCHS passes over the data (default: 20)",
        "share kept, in % (default: 0.5)",
        "{fast,slow}",
        "comma-separated views (default: a,b)",
        "--standardize, --no-standardize z-score the inputs (default: True)",
        "--json print JSON",
    ):
        assert part in text


def test_a_setting_from_the_environment_is_the_flag_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CTL_WORK_DIR", "/elsewhere")
    assert Demo.parse(["t", "--out", "o"]).work_dir == Path("/elsewhere")
    assert Demo.parse(["t", "--out", "o", "--work-dir", "w"]).work_dir == Path("w")
    given = RuntimeSettings(work_dir=Path("given"))
    assert Demo.parse(["t", "--out", "o"], given).work_dir == Path("given")
    assert Demo(table=Path("t"), out=Path("o")).work_dir == Path("/elsewhere")  # built in code


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--epochs", "two"], "--epochs"),
        (["--rate", "1.5"], "--rate"),
        (["--mode", "medium"], "--mode"),
        ([], "--out"),
    ],
)
def test_a_bad_value_is_a_usage_error(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["t"] + ([] if flag == "--out" else ["--out", "o"])
    with pytest.raises(SystemExit) as exc:
        Demo.parse(base + argv)
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err
