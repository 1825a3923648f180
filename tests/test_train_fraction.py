"""``ctl train --train-fraction``: fewer training scenes, the same val and test."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.test_features import make_data
from training.split import UNUSED
from training.train import TrainOptions, train


def test_a_fraction_of_the_training_scenes(tmp_path: Path) -> None:
    make_data(tmp_path / "data", n_scenes=40)
    flags = ["--data", str(tmp_path / "data"), "--cache", str(tmp_path / "cache")]
    flags += ["--backbone", "tiny", "--epochs", "1", "--batch-size", "4", "--views", "orig"]
    full = train(TrainOptions.parse([*flags, "--out", str(tmp_path / "full")]))
    flags += ["--train-fraction", "0.25", "--init-seed", "3"]
    quarter = train(TrainOptions.parse([*flags, "--out", str(tmp_path / "quarter")]))
    assert full["train_pairs"] == 32 and quarter["train_pairs"] == 8
    assert (quarter["val_pairs"], quarter["test_pairs"]) == (full["val_pairs"], full["test_pairs"])
    split = json.loads((tmp_path / "quarter" / "split.json").read_text())
    assert Counter(split.values()) == {"train": 8, UNUSED: 24, "val": 4, "test": 4}
    full_split = json.loads((tmp_path / "full" / "split.json").read_text())
    assert {s for s, k in split.items() if k == "train"} < {
        s for s, k in full_split.items() if k == "train"
    }
    popularity = json.loads((tmp_path / "quarter" / "popularity.json").read_text())
    assert sum(popularity.values()) == 8  # counted on the kept scenes only


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_fraction_out_of_range(
    fraction: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        TrainOptions.parse(
            ["--data", str(tmp_path), "--out", str(tmp_path), "--train-fraction", fraction]
        )
    assert exc.value.code == 2 and "--train-fraction" in capsys.readouterr().err
