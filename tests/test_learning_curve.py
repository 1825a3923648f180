"""``bench/learning_curve.py``: the log2 fit, and a resumable run on a synthetic data set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.learning_curve import PAPER_PAIRS, fit_log2, main
from tests.test_features import make_data


def test_fit_recovers_the_gain_per_doubling_and_its_spread() -> None:
    slopes = {0: 0.01, 1: 0.02, 2: 0.03}  # each seed its own line through 0.5 at 1 pair
    points = [(s, p, 0.5 + b * math.log2(p)) for s, b in slopes.items() for p in (100, 400, 1600)]
    fit = fit_log2(points)
    assert fit.slope == pytest.approx(0.02)
    assert [b for b, _ in fit.seed_lines] == pytest.approx([0.01, 0.02, 0.03])
    assert fit.slope_se == pytest.approx(0.01 / math.sqrt(3))  # std 0.01 over 3 seeds
    assert fit.at_paper == pytest.approx(0.5 + 0.02 * math.log2(PAPER_PAIRS))
    assert fit_log2([(0, 100, 0.6), (0, 200, 0.7)]).slope_se is None  # one seed: no spread


@pytest.mark.timeout(300)
def test_a_small_curve_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_data(tmp_path / "data", n_scenes=40)
    out = tmp_path / "curve"
    argv = ["--data", str(tmp_path / "data"), "--cache", str(tmp_path / "cache"), "--out", str(out)]
    argv += ["--fractions", "1/4,1", "--seeds", "0,1", "--epochs", "1", "--bootstrap", "10"]
    argv += ["--", "--backbone", "tiny", "--batch-size", "4"]
    assert main(argv) == 0
    summary = json.loads((out / "learning_curve.json").read_text())
    assert summary["complete"] and summary["seeds"] == [0, 1]
    assert summary["train_args"] == ["--backbone", "tiny", "--batch-size", "4"]
    assert summary["train_options"]["epochs"] == 1 and summary["train_options"]["seed"] == 0
    assert [m["train_pairs_mean"] for m in summary["by_fraction"]] == [8, 32]
    assert len(summary["runs"]) == 4 and summary["val_pairs"] == 4
    assert len(summary["fits"]["val_auc"]["seed_lines"]) == 2
    assert (out / "learning_curve.png").stat().st_size > 10_000
    assert "val_auc: " in capsys.readouterr().out

    checkpoint = out / "runs" / "f1-4-s1" / "checkpoint.pt"
    mtime = checkpoint.stat().st_mtime_ns
    assert main(argv) == 0  # every run is scored already: nothing is trained again
    assert checkpoint.stat().st_mtime_ns == mtime
    assert json.loads((out / "learning_curve.json").read_text())["runs"] == summary["runs"]
