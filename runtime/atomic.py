"""Atomic file writes for every artifact: index versions, runs, caches, reports, pictures.

The writer fills a temp file beside the target, which is flushed to disk and swapped in by
``os.replace``, so a crash leaves either the old file or the new one, never half of one. It
lives in the lowest layer that writes files (the index); training uses it too.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path, mode: int = 0o644) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; it replaces ``path`` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.fchmod(fd, mode)  # mkstemp makes it private; these files are meant to be shared
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: object, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")
