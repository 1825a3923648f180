"""The layering rules, as import-linter contracts in pyproject.toml ([tool.importlinter]):
service and training on index on model, nothing importing the ``ctl`` command, and the serving
code (service, index, model's runtime) never importing torch."""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
    assert lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True) == 0
