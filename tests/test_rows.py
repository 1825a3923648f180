"""``index.rows``: CSV, JSON lines and Parquet rows with the line a person would fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from index.rows import Row, RowError, TableError, read_rows


def rows_of(path: Path, required: tuple[str, ...] = ()) -> list[Row | RowError]:
    return list(read_rows(path, required))


def test_csv_rows_carry_their_physical_line(tmp_path: Path) -> None:
    path = tmp_path / "products.csv"
    path.write_text(
        "\ufeffid, category ,image\n"  # a BOM and padded names, as spreadsheets write them
        "p1,Shoes,a.jpg\n"
        "\n"
        'p2,"Shirts, Tops","multi\nline.jpg"\n'
        "p3,Pants,c.jpg\n",
        encoding="utf-8",
    )
    assert rows_of(path, ("id", "category")) == [
        Row(2, {"id": "p1", "category": "Shoes", "image": "a.jpg"}),
        Row(4, {"id": "p2", "category": "Shirts, Tops", "image": "multi\nline.jpg"}),
        Row(6, {"id": "p3", "category": "Pants", "image": "c.jpg"}),
    ]


def test_csv_bad_rows_are_reported_and_reading_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "products.csv"
    path.write_bytes(
        b"id,category,image\n"
        b"p1,Shoes\n"  # too few fields
        b"p2,Shoes,a.jpg,extra\n"  # too many
        b"p3,\xff\xfe,b.jpg\n"  # not UTF-8
        b"p4,,c.jpg\n"  # a required value missing
        b"p5,Pants,d.jpg\n"
    )
    assert rows_of(path, ("id", "category")) == [
        RowError(2, "expected 3 fields, got 2"),
        RowError(3, "expected 3 fields, got 4"),
        RowError(4, "not UTF-8 text (line 4)"),
        RowError(5, "no value for category"),
        Row(6, {"id": "p5", "category": "Pants", "image": "d.jpg"}),
    ]


def test_csv_parser_errors_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "products.csv"
    path.write_text("id,category\np1," + "x" * 200_000 + "\np2,Shoes\n", encoding="utf-8")
    got = rows_of(path)
    assert isinstance(got[0], RowError) and got[0].line == 2
    assert got[0].reason.startswith("malformed CSV: field larger than field limit")
    assert got[1:] == [Row(3, {"id": "p2", "category": "Shoes"})]


def test_csv_without_a_required_column_fails_as_a_whole(tmp_path: Path) -> None:
    path = tmp_path / "products.csv"
    path.write_text("id,image\np1,a.jpg\n", encoding="utf-8")
    with pytest.raises(TableError, match="no column category"):
        rows_of(path, ("id", "category"))
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(TableError, match="no column id"):
        rows_of(empty, ("id",))


def test_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "looks.jsonl"
    path.write_bytes(
        b'{"scene": "s1.jpg", "product": "p1", "bbox": [0.1, 0.2, 0.5, 0.9]}\n'
        b"\n"
        b'{"scene": "s2.jpg", "product": \n'  # cut short
        b"[1, 2]\n"  # not an object
        b'{"scene": "s3.jpg"}\n'  # no product
        b'{"scene": "\xff", "product": "p2"}\n'
        b'{"scene": "s4.jpg", "product": "p3", "bbox": "1,2,3,4"}'  # no final newline
    )
    got = rows_of(path, ("scene", "product"))
    assert got[0] == Row(1, {"scene": "s1.jpg", "product": "p1", "bbox": [0.1, 0.2, 0.5, 0.9]})
    assert got[1:] == [
        RowError(3, "malformed JSON: Expecting value at column 32"),  # where the line stops
        RowError(4, "expected a JSON object, got list"),
        RowError(5, "no value for product"),
        RowError(6, "not UTF-8 text"),
        Row(7, {"scene": "s4.jpg", "product": "p3", "bbox": "1,2,3,4"}),
    ]


def test_parquet_rows_are_numbered_from_one(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "products.parquet"
    table = pa.table({"id": ["p1", "p2", "p3"], "category": ["Shoes", None, "Pants"]})
    pq.write_table(table, path, row_group_size=2)  # rows span two batches
    assert rows_of(path, ("id", "category")) == [
        Row(1, {"id": "p1", "category": "Shoes"}),
        RowError(2, "no value for category"),
        Row(3, {"id": "p3", "category": "Pants"}),
    ]
    with pytest.raises(TableError, match="no column image"):
        rows_of(path, ("image",))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(TableError, match="not a readable Parquet file"):
        rows_of(broken)


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "products.xlsx"
    path.write_bytes(b"")
    with pytest.raises(TableError, match=r"unknown table format '\.xlsx'"):
        rows_of(path)
