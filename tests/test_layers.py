"""The layering rule: nothing below imports anything above, and serving never imports torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# package -> first-party packages it may import
ALLOWED = {
    "model": {"model"},
    "index": {"index", "model"},
    "service": {"service", "index", "model"},
    "training": {"training", "model", "service", "index"},
}
SHARED = {"service.config"}
"""The one Settings class: a leaf module every step's ``main(argv)`` reads its defaults from."""
TORCH_FREE = ["service", "index", "model/runtime.py", "model/preprocess.py", "model/__init__.py"]


def _imports(path: Path) -> set[str]:
    """Top-level packages ``path`` imports, leaving out the shared config module."""
    tree = ast.parse(path.read_text(), str(path))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return {m.split(".")[0] for m in modules - SHARED}


def _files(target: str) -> list[Path]:
    p = REPO / target
    return [p] if p.is_file() else sorted(p.rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_upward_imports(package: str) -> None:
    first_party = set(ALLOWED) | {"cli"}
    for f in _files(package):
        bad = (_imports(f) & first_party) - ALLOWED[package]
        assert not bad, f"{f.relative_to(REPO)} imports {sorted(bad)}"


def test_model_does_not_import_training_or_service() -> None:
    for f in _files("model"):
        assert not _imports(f) & {"training", "service", "index"}, f


@pytest.mark.parametrize("target", TORCH_FREE)
def test_serving_code_never_imports_torch(target: str) -> None:
    for f in _files(target):
        assert not _imports(f) & {"torch", "torchvision"}, f"{f.relative_to(REPO)} imports torch"
