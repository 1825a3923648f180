"""Progress of long steps: a bar on a terminal, the step's own log lines anywhere else."""

from __future__ import annotations

import logging

import pytest

from runtime import progress

log = logging.getLogger("tests.progress")


def _steps() -> None:
    with progress.Progress(log, 3, "steps", "step") as p:
        for i in range(1, 4):
            p.update(1, "step %d/3 done", i)


def test_without_a_terminal_the_log_lines_stay(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO, "tests.progress"):
        _steps()
    assert [r.getMessage() for r in caplog.records] == [f"step {i}/3 done" for i in (1, 2, 3)]
    assert capsys.readouterr().err == ""  # no bar


def test_on_a_terminal_a_bar_replaces_them(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    with caplog.at_level(logging.INFO, "tests.progress"):
        _steps()
    assert not caplog.records
    err = capsys.readouterr().err
    assert "steps" in err and "3/3" in err
