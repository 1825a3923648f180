"""The layering rules, as import-linter contracts in pyproject.toml ([tool.importlinter]):
service, batch and training over index and model, both over the torch-free runtime; nothing
importing the ``ctl`` command; runtime, index, service and batch importing neither torch nor
model/; no route module importing another (docs/architecture.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# In a process of its own: import-linter configures logging with dictConfig, which would turn
# off every logger already created in this one (and the tests that read their records).
LINT = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))"
)


def test_import_contracts_are_kept() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-c", LINT], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout, run.stdout
