"""Product attributes (title, price, stock, brand, ...) beside the index, editable live.

Attributes are kept apart from the embeddings, in one SQLite file next to the index versions
(``ARTIFACTS/index/attributes.sqlite``), so a stock flip touches no FAISS file and no version.
Every write is one transaction that bumps a revision number and stamps the rows it changed with
it; a process follows by reading the rows stamped after the revision it holds. SQLite serialises
writers across processes (a writer that waits longer than ``busy_timeout`` is told so, never
silently dropped), so a PATCH and an import both land, in some order.

In memory a :class:`CatalogAttributes` snapshot holds, per category, arrays aligned with the
index rows (stock, price, popularity, codes of every equality-filterable value), which the
filters of :mod:`index.filters` turn into a row mask. Snapshots are never changed in place: a
change makes a new one, so a request that took one sees one consistent revision.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

ATTRIBUTES_FILE = "attributes.sqlite"
MAX_ATTRIBUTES = 32
"""Keys of a product's ``attributes`` map at most."""
MAX_VALUE_CHARS = 256
"""Characters of an ``attributes`` value (and of brand, currency) at most."""
MAX_TEXT_CHARS = 2048
"""Characters of ``title`` and ``url`` at most."""
ATTRIBUTE_KEY_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
BUSY_TIMEOUT_S = 5.0
"""How long a writer waits for another one (an import's transaction) before giving up."""
FIELDS = ("title", "price", "currency", "url", "brand", "in_stock", "popularity", "attributes")

AttributeKey = Annotated[str, StringConstraints(pattern=ATTRIBUTE_KEY_PATTERN)]
AttributeValue = (
    Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS)]
    | int
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
)


class AttributesError(ValueError):
    """Attributes that cannot be stored (too many keys, a bad value, an unknown field)."""


class AttributesBusyError(Exception):
    """Another writer held the attribute store for longer than :data:`BUSY_TIMEOUT_S`."""


class ProductAttributes(BaseModel):
    """What a shop says about a product; every field optional. In an update, a field that is
    ``null`` goes back to its default (and an ``attributes`` key that is ``null`` is removed)."""

    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | None = None
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    currency: Annotated[str, StringConstraints(max_length=16)] | None = Field(
        default=None, examples=["EUR"]
    )
    url: Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)] | None = None
    brand: Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS)] | None = None
    in_stock: bool | None = Field(default=None, description="absent: in stock")
    popularity: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="the shop's own sales or views"
    )
    attributes: dict[AttributeKey, AttributeValue | None] | None = Field(
        default=None,
        description=f"a flat map of at most {MAX_ATTRIBUTES} keys ({ATTRIBUTE_KEY_PATTERN}) to "
        f"strings (at most {MAX_VALUE_CHARS} characters), numbers or booleans",
        examples=[{"color": "red", "size": 42}],
    )

    @field_validator("attributes")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(value) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes, got {len(value)}")
        return value


def parse_update(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a client sent (``null`` kept: it resets), validated; AttributesError naming
    the problem."""
    try:
        parsed = ProductAttributes.model_validate(dict(raw))
    except ValueError as exc:
        raise AttributesError(_describe(exc)) from None
    return {name: getattr(parsed, name) for name in parsed.model_fields_set}


def _describe(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    parts = []
    for e in errors():
        where = ".".join(str(p) for p in e.get("loc", ())) or "attributes"
        msg = str(e.get("msg", "invalid"))
        if e.get("type") == "extra_forbidden":
            msg = f"unknown field; valid fields: {', '.join(FIELDS)}"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def merge(record: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with ``update`` applied (``None`` removes a field or an attributes key);
    AttributesError when the merged ``attributes`` map grows past :data:`MAX_ATTRIBUTES`."""
    out = dict(record)
    for name, value in update.items():
        if name == "attributes" and value is not None:
            attrs = {**out.get("attributes", {}), **value}
            attrs = {k: v for k, v in attrs.items() if v is not None}
            if len(attrs) > MAX_ATTRIBUTES:
                raise AttributesError(
                    f"attributes: at most {MAX_ATTRIBUTES} keys per product, this update makes "
                    f"{len(attrs)}"
                )
            value = attrs or None
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def text(value: object) -> str:
    """The text an equality filter compares: ``true``/``false``, numbers without a needless
    ``.0`` (so ``42`` matches ``"42"`` and ``42.0``), strings as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        f = float(value)
        return str(int(f)) if f.is_integer() and abs(f) < 1e15 else repr(f)
    return str(value)


class AttributeStore:
    """The SQLite file of every product's attributes, with a revision per write."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        # WAL: readers never wait for the writer; NORMAL: a commit survives a killed process
        # (not a power cut) without an fsync each, which a stock feed's thousands of flips need.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(
            "CREATE TABLE IF NOT EXISTS products("
            "  id TEXT PRIMARY KEY, data TEXT NOT NULL, rev INTEGER NOT NULL);"
            "CREATE INDEX IF NOT EXISTS products_rev ON products(rev);"
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        )
        return db

    def revision(self) -> int:
        """The revision of the last write (0: never written, or no file yet)."""
        if not self.path.is_file():
            return 0
        db = self._connect()
        try:
            return _revision(db)
        finally:
            db.close()

    def read(self, since: int = 0) -> tuple[int, dict[str, dict[str, Any]]]:
        """(revision, id -> record) of the rows written after revision ``since`` (all: 0), in
        one read transaction. A removed product reads as ``{}`` (its defaults)."""
        if not self.path.is_file():
            return 0, {}
        db = self._connect()
        try:
            db.execute("BEGIN")
            rev = _revision(db)
            rows = db.execute("SELECT id, data FROM products WHERE rev > ?", (since,)).fetchall()
            db.execute("COMMIT")
        finally:
            db.close()
        return rev, {pid: json.loads(data) for pid, data in rows}

    def update(
        self, updates: Mapping[str, Mapping[str, Any]], replace: bool = False
    ) -> tuple[int, dict[str, dict[str, Any]]]:
        """Apply id -> validated update (:func:`parse_update`) in one transaction: merged into
        each stored record, or replacing it (``replace``). Returns the new revision and the
        records as now stored. AttributesError (nothing written) when a merge is too big;
        AttributesBusyError when another writer held the store too long."""
        with self.writing() as write:
            return write(updates, replace)

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        """One write transaction: ``with store.writing() as write: write(updates, replace)``.
        Committed when the block ends, rolled back when it raises; other writers wait (up to
        :data:`BUSY_TIMEOUT_S`, then AttributesBusyError) until then."""
        try:
            db = self._connect()
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # "database is locked" after the timeout
            raise AttributesBusyError(f"the attribute store is busy: {exc}") from exc
        try:
            rev = _revision(db) + 1

            def write(
                updates: Mapping[str, Mapping[str, Any]], replace: bool = False
            ) -> tuple[int, dict[str, dict[str, Any]]]:
                stored: dict[str, dict[str, Any]] = {}
                for pid, update in updates.items():
                    old: dict[str, Any] = {}
                    if not replace:
                        found = db.execute("SELECT data FROM products WHERE id = ?", (pid,))
                        row = found.fetchone()
                        old = json.loads(row[0]) if row else {}
                    stored[pid] = merge(old, update)
                db.executemany(
                    "INSERT INTO products(id, data, rev) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET data = excluded.data, rev = excluded.rev",
                    [(pid, json.dumps(rec), rev) for pid, rec in stored.items()],
                )
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('revision', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (rev,),
                )
                return rev, stored

            try:
                yield write
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()


Writer = Callable[[Mapping[str, Mapping[str, Any]], bool], "tuple[int, dict[str, dict[str, Any]]]"]


def _revision(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Column:
    """One equality-filterable key of a category: its values' codes per row (-1: absent)."""

    codes: np.ndarray
    vocab: dict[str, int]

    def matching(self, values: Iterable[str]) -> np.ndarray:
        """Rows whose value is one of ``values`` (as :func:`text`)."""
        wanted = [self.vocab[v] for v in values if v in self.vocab]
        if not wanted:
            return np.zeros(len(self.codes), bool)
        return np.isin(self.codes, np.asarray(wanted, np.int32))


BRAND = "brand"
"""The column of ``brand``; the ``attributes`` map's keys have columns ``attributes.KEY``."""


@dataclass(frozen=True)
class CategoryAttributes:
    """A category's attributes as arrays aligned with its index rows.

    ``popularity`` is NaN where the shop gave none (a ranking prior fills in its own default).
    ``revision``: the store's revision when these rows last changed (cached answers name it).
    """

    revision: int
    in_stock: np.ndarray
    price: np.ndarray
    popularity: np.ndarray
    columns: Mapping[str, Column]

    @classmethod
    def build(
        cls, revision: int, ids: Sequence[str], records: Mapping[str, Mapping[str, Any]]
    ) -> CategoryAttributes:
        n = len(ids)
        out = cls(revision, np.ones(n, bool), np.full(n, np.nan), np.full(n, np.nan), {})
        # Rows without a record keep the defaults set above.
        return out._filled([(row, records[pid]) for row, pid in enumerate(ids) if pid in records])

    def updated(
        self, revision: int, changes: Sequence[tuple[int, Mapping[str, Any]]]
    ) -> CategoryAttributes:
        """A copy at ``revision`` with the rows of ``changes`` (row, record) replaced; this one
        is unchanged."""
        copy = CategoryAttributes(
            revision,
            self.in_stock.copy(),
            self.price.copy(),
            self.popularity.copy(),
            {k: Column(c.codes.copy(), dict(c.vocab)) for k, c in self.columns.items()},
        )
        return copy._filled(changes)

    def _filled(self, changes: Sequence[tuple[int, Mapping[str, Any]]]) -> CategoryAttributes:
        """Write ``changes`` into this (new, not yet shared) object's arrays; returns it."""
        n = len(self.in_stock)
        cols = dict(self.columns)

        def put(key: str, row: int, value: object) -> None:
            if key not in cols:
                cols[key] = Column(np.full(n, -1, np.int32), {})
            col = cols[key]
            col.codes[row] = col.vocab.setdefault(text(value), len(col.vocab))

        for row, rec in changes:
            self.in_stock[row] = rec.get("in_stock", True)
            self.price[row] = rec.get("price", math.nan)
            self.popularity[row] = rec.get("popularity", math.nan)
            for col in cols.values():
                col.codes[row] = -1
            if "brand" in rec:
                put(BRAND, row, rec["brand"])
            for key, value in rec.get("attributes", {}).items():
                put(f"attributes.{key}", row, value)
        object.__setattr__(self, "columns", cols)
        return self


Locate = Callable[[str], "tuple[str, int] | None"]
"""product id -> (category, index row), or ``None`` for a product the catalog does not hold."""


class CatalogAttributes:
    """A snapshot of every product's attributes at one revision, laid out per category."""

    def __init__(
        self,
        revision: int,
        records: dict[str, dict[str, Any]],
        categories: dict[str, CategoryAttributes],
        locate: Locate,
    ) -> None:
        self.revision = revision
        self._records = records
        self._categories = categories
        self._locate = locate

    @classmethod
    def build(
        cls,
        revision: int,
        records: dict[str, dict[str, Any]],
        rows: Mapping[str, Sequence[str]],
        locate: Locate,
    ) -> CatalogAttributes:
        """From id -> record and category -> ids in index row order."""
        cats = {c: CategoryAttributes.build(revision, ids, records) for c, ids in rows.items()}
        return cls(revision, {p: r for p, r in records.items() if r}, cats, locate)

    def record(self, pid: str) -> dict[str, Any]:
        """The product's attributes as stored (``{}``: none, so every default)."""
        return self._records.get(pid, {})

    def category(self, name: str) -> CategoryAttributes:
        """Arrays aligned with ``name``'s index rows (``popularity`` for a ranking prior)."""
        return self._categories[name]

    def apply(self, revision: int, changed: Mapping[str, dict[str, Any]]) -> CatalogAttributes:
        """A new snapshot with the ``changed`` records; only their rows are rewritten. Ids the
        catalog does not hold are kept for a later version that may hold them."""
        records = dict(self._records)
        per_category: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
        for pid, rec in changed.items():
            if rec:
                records[pid] = rec
            else:
                records.pop(pid, None)
            where = self._locate(pid)
            if where is not None:
                per_category.setdefault(where[0], []).append((where[1], rec))
        cats = dict(self._categories)
        for name, rows in per_category.items():
            cats[name] = cats[name].updated(revision, rows)
        return CatalogAttributes(revision, records, cats, self._locate)
