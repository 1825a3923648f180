"""The artifact directory's files and manifest, checked before anything runs on them.

Loading verifies every file against the manifest checksums first, so a tampered or half-copied
artifact directory is refused instead of serving wrong embeddings.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SCENE_FILE = "scene.onnx"
PRODUCT_FILE = "product.onnx"
PREPROCESS_FILE = "preprocess.json"
MANIFEST_FILE = "manifest.json"
REQUIRED_FILES = (SCENE_FILE, PRODUCT_FILE, PREPROCESS_FILE)
MANIFEST_KEYS = ("version", "backbone", "categories", "embedding_dim", "grid", "files")


class ArtifactError(Exception):
    """The artifact directory is missing, incomplete, tampered with or inconsistent."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (index embeddings can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(*parts: object) -> str:
    """Hex sha256 of ``parts`` as JSON (keys sorted, other objects as text): a stamp or a cache
    key that changes whenever they do."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def read_manifest(artifacts_dir: Path) -> dict[str, Any]:
    """The manifest, after checking that it is complete and that every file matches its sha256."""
    artifacts_dir = Path(artifacts_dir)
    path = artifacts_dir / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{path} not found: {artifacts_dir} is not an artifacts directory "
            "(create one with 'ctl export --run RUN_DIR --out DIR')"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks the keys {missing}")
    files: dict[str, str] = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise ArtifactError(f"{path} lists no checksum for {name}")
    for name, expected in files.items():
        file = artifacts_dir / name
        if not file.is_file():
            raise ArtifactError(f"{file} is missing (listed in {path})")
        actual = sha256_file(file)
        if actual != expected:
            raise ArtifactError(
                f"checksum mismatch for {file}: manifest says sha256 {expected}, file has "
                f"{actual}; the artifact was modified or corrupted, re-run 'ctl export'"
            )
    return dict(manifest)
