"""The dependency locks: complete for their extras, CPU and GPU builds never mixed, every pin
hashed, and the README's commands, .ci/run and the images installing from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCKS = {
    "serve": ["cpu"],
    "train": ["cpu", "train"],
    "batch": ["cpu", "batch"],
    "dev": ["cpu", "train", "batch", "dev"],
    "gpu": ["gpu"],
}
CPU_BUILDS = {"onnxruntime", "faiss-cpu"}
GPU_BUILDS = {"onnxruntime-gpu", "faiss-gpu"}


def _pins(lock: str) -> dict[str, str]:
    """name -> version of every `name==version` line of requirements/<lock>.txt."""
    text = (REPO / "requirements" / f"{lock}.txt").read_text()
    return {
        canonicalize_name(m[1]): m[2]
        for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, flags=re.MULTILINE)
    }


def _wanted(extras: list[str]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_pins_every_requirement_of_its_extras_within_bounds(lock: str) -> None:
    pins = _pins(lock)
    for req in _wanted(LOCKS[lock]):
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements/{lock}.txt lacks {req.name}: run requirements/lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock}.txt pins {name}=={pins[name]}, outside {req}: "
            "run requirements/lock"
        )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_cpu_and_gpu_builds_are_alternatives(lock: str) -> None:
    pins = set(_pins(lock))
    wrong = CPU_BUILDS if lock == "gpu" else GPU_BUILDS
    right = GPU_BUILDS if lock == "gpu" else CPU_BUILDS
    assert not pins & wrong, f"requirements/{lock}.txt mixes in {pins & wrong}"
    assert right <= pins


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_is_hashed_and_no_index_is_named(lock: str) -> None:
    text = (REPO / "requirements" / f"{lock}.txt").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 6)[-1])
    for entry in entries:
        if "==" in entry.split("\n", 1)[0]:
            assert "--hash=sha256:" in entry, f"{lock}: unhashed pin {entry.splitlines()[0]}"
    assert "://" not in text, f"requirements/{lock}.txt names an index or URL"


def test_readme_ci_and_images_install_from_the_locks() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [line.split("   #")[0].strip() for line in readme[:8] if line.startswith("python3")]
    assert len(commands) == 2, "the README starts with the main command and the test command"
    assert "-r requirements/train.txt" in commands[0] and commands[0].endswith("ctl quickstart")
    assert "-r requirements/dev.txt" in commands[1] and commands[1].endswith("python -m pytest")
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must call the README's test command"
    assert ci.index("rm -rf .venv") < ci.index(commands[1]), ".ci/run must start from a fresh venv"
    for image, lock in (("api", "serve"), ("job", "train")):
        dockerfile = (REPO / "docker" / f"{image}.Dockerfile").read_text()
        assert f"pip install -r requirements/{lock}.txt" in dockerfile
        # The project goes in without its dependencies (a wheel built in the image counts).
        no_deps = r"pip (install|wheel) --no-deps (--wheel-dir \S+ )?\."
        assert re.search(no_deps, dockerfile), f"{image}: the project unlocked"
