"""Atomic writes: the target is replaced whole, and a failed write leaves the old file."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.atomic import atomic_path, write_json


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_written_file_is_shared_readable(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.json"
    write_json(target, [1, 2])
    assert target.stat().st_mode & 0o777 == 0o644
    assert target.read_text() == "[\n  1,\n  2\n]\n"
