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


def test_quickstart_ends_by_serving_through_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training's pipeline gets the serving step from cli.py (training never imports the
    service): ``ctl quickstart`` hands it ``ctl serve``'s main."""
    from service import main as service_main
    from training import quickstart

    seen: dict[str, object] = {}

    def pipeline(argv: list[str], serve: quickstart.Serve | None = None) -> int:
        assert serve is not None
        seen["argv"] = argv
        return serve(["--artifacts", "A", "--port", "1"])

    def serve_main(argv: list[str]) -> int:
        seen["served"] = argv
        return 7

    monkeypatch.setattr(quickstart, "main", pipeline)
    monkeypatch.setattr(service_main, "main", serve_main)
    assert cli.main(["quickstart", "--no-serve"]) == 7
    assert seen == {"argv": ["--no-serve"], "served": ["--artifacts", "A", "--port", "1"]}
