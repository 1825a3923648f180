"""The ``ctl`` dispatcher: every advertised command resolves to a real ``main(argv)``."""

from __future__ import annotations

import importlib

import pytest

import cli


@pytest.mark.parametrize("words", list(cli.COMMANDS))
def test_every_command_resolves(words: tuple[str, ...]) -> None:
    module_name, func_name = cli.COMMANDS[words][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    assert callable(func)


@pytest.mark.parametrize("words", list(cli.COMMANDS))
def test_every_command_has_help(words: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*words, "--help"])
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_unknown_command_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_no_arguments_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 0
    assert "quickstart" in capsys.readouterr().out
