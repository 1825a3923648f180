"""Read a table a shop hands us (CSV, JSON lines or Parquet, by suffix) one row at a time.

Each row comes with the line a person would look at to fix it, and a malformed line comes
back as a ``RowError`` instead of stopping the read: an import of thousands of rows reports
every bad one at once. Shared by ``ctl catalog import`` and ``ctl data import``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSV_SUFFIXES = frozenset({".csv"})
JSON_LINES_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
SUFFIXES = CSV_SUFFIXES | JSON_LINES_SUFFIXES | PARQUET_SUFFIXES


@dataclass(frozen=True)
class Row:
    """One record: ``line`` is its CSV physical line (header = 1), JSON line, or Parquet row
    number (from 1)."""

    line: int
    values: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    """A record that could not be read, and why."""

    line: int
    reason: str


class TableError(ValueError):
    """The whole table is unusable (unknown format, missing column, unreadable file)."""


def read_rows(path: Path, required: Sequence[str] = ()) -> Iterator[Row | RowError]:
    """Yield each row of ``path`` as a ``Row``, or a ``RowError`` for a malformed one.

    ``required`` columns must be present: a CSV or Parquet table without one raises
    ``TableError`` before any row; a row lacking a value for one (absent, null or blank) is
    a ``RowError``. Raises ``TableError`` for an unknown suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        rows = _csv_rows(path, required)
    elif suffix in JSON_LINES_SUFFIXES:
        rows = _json_lines_rows(path)
    elif suffix in PARQUET_SUFFIXES:
        rows = _parquet_rows(path, required)
    else:
        known = ", ".join(sorted(SUFFIXES))
        raise TableError(f"{path}: unknown table format {suffix!r} (expected one of {known})")
    for item in rows:
        if isinstance(item, Row) and (missing := _missing(item.values, required)):
            yield RowError(item.line, f"no value for {', '.join(missing)}")
        else:
            yield item


def _missing(values: dict[str, Any], required: Sequence[str]) -> list[str]:
    return [c for c in required if values.get(c) is None or str(values[c]).strip() == ""]


def _check_columns(path: Path, columns: Iterable[str], required: Sequence[str]) -> None:
    present = set(columns)
    if missing := [c for c in required if c not in present]:
        raise TableError(
            f"{path}: no column {', '.join(missing)} (columns: {', '.join(sorted(present))})"
        )


class _Lines:
    """The file's lines decoded as UTF-8 (a BOM allowed), remembering which did not decode so
    that the record holding them is reported rather than read with replacement characters."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bad: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        with self.path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    self.bad.add(number)
                    yield raw.decode("utf-8", errors="replace")


def _csv_rows(path: Path, required: Sequence[str]) -> Iterator[Row | RowError]:
    lines = _Lines(path)
    reader = csv.reader(iter(lines))
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield RowError(start, f"malformed CSV: {exc}")
            continue
        if not record or all(not field.strip() for field in record):
            continue  # a blank line
        if bad := sorted(n for n in lines.bad if start <= n <= reader.line_num):
            yield RowError(start, f"not UTF-8 text (line {bad[0]})")
            continue
        if header is None:
            header = [name.strip() for name in record]
            _check_columns(path, header, required)
            continue
        if len(record) != len(header):
            yield RowError(start, f"expected {len(header)} fields, got {len(record)}")
            continue
        yield Row(start, dict(zip(header, record, strict=True)))
    if header is None:
        _check_columns(path, (), required)


def _json_lines_rows(path: Path) -> Iterator[Row | RowError]:
    lines = _Lines(path)
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        if number in lines.bad:
            yield RowError(number, "not UTF-8 text")
            continue
        try:
            value = json.loads(text.rstrip("\r\n"))  # so that an error names its column
        except json.JSONDecodeError as exc:
            yield RowError(number, f"malformed JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            yield RowError(number, f"expected a JSON object, got {type(value).__name__}")
            continue
        yield Row(number, value)


def _parquet_rows(path: Path, required: Sequence[str]) -> Iterator[Row | RowError]:
    try:
        import pyarrow.parquet as pq  # only Parquet needs it
    except ImportError as exc:
        raise TableError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from exc
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise TableError(f"{path}: not a readable Parquet file: {exc}") from exc
    _check_columns(path, table.schema_arrow.names, required)
    number = 0
    for batch in table.iter_batches():
        for values in batch.to_pylist():
            number += 1
            yield Row(number, values)
