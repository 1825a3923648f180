"""Which products a recommendation may hold: stock, exclusions, brand, attributes, price.

A filter becomes a boolean mask over a category's index rows (:meth:`ProductFilter.mask`),
computed from the attribute arrays of :mod:`index.attributes`; :mod:`index.search` hands it to
FAISS as an ``IDSelectorBitmap`` or ranks the passing rows exactly.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from index.attributes import ATTRIBUTE_KEY_PATTERN, BRAND, AttributeValue, CategoryAttributes, text

MAX_EXCLUDE = 1000
MAX_VALUES = 100
"""Values of one equality filter (brand, or one attributes key) at most."""

Values = Annotated[list[AttributeValue], Field(max_length=MAX_VALUES)] | AttributeValue
"""An equality filter's value, or a list of them: what an ``attributes`` value may be."""


class FilterError(ValueError):
    """A filter that cannot be applied; the message names the problem (and valid keys)."""


class ProductFilter(BaseModel):
    """Only products that pass every given condition are recommended."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_stock_only: bool = Field(
        default=True, description="leave out products marked out of stock (in_stock false)"
    )
    exclude: list[Annotated[str, StringConstraints(max_length=128)]] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDE,
        description="product ids never to recommend (e.g. the cart)",
    )
    brand: Values | None = Field(default=None, description="one brand, or a list of them")
    attributes: dict[Annotated[str, StringConstraints(pattern=ATTRIBUTE_KEY_PATTERN)], Values] = (
        Field(
            default_factory=dict,
            max_length=32,
            description="attributes key -> a value or a list of values; each key must match",
            examples=[{"color": ["red", "blue"]}],
        )
    )
    price_min: float | None = Field(default=None, allow_inf_nan=False)
    price_max: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _price_range(self) -> ProductFilter:
        if (
            self.price_min is not None
            and self.price_max is not None
            and self.price_min > self.price_max
        ):
            raise ValueError(f"price_min ({self.price_min}) > price_max ({self.price_max})")
        return self

    @classmethod
    def parse(cls, raw: str | dict[str, Any] | None) -> ProductFilter:
        """A filter from JSON text or a dict (``None`` or empty: the default); FilterError
        naming what is wrong, the valid keys for an unknown one."""
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return DEFAULT_FILTER
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                raise FilterError(f"filter is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise FilterError(f"filter must be a JSON object with keys {', '.join(cls.keys())}")
        unknown = sorted(set(raw) - set(cls.keys()))
        if unknown:
            raise FilterError(
                f"unknown filter key {', '.join(map(repr, unknown))[:200]}; "
                f"valid keys: {', '.join(cls.keys())}"
            )
        try:
            return cls.model_validate(raw)
        except ValueError as exc:
            errors = getattr(exc, "errors", None)
            if errors is None:
                raise FilterError(f"filter: {exc}") from None
            parts = [
                f"filter.{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}"
                if e["loc"]
                else f"filter: {e['msg']}"
                for e in errors()
            ]
            raise FilterError("; ".join(parts)) from None

    @classmethod
    def keys(cls) -> list[str]:
        return list(cls.model_fields)

    def cache_key(self) -> str:
        """Short and the same for equal filters: part of a cached answer's key."""
        if self == DEFAULT_FILTER:
            return "-"
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def mask(
        self, attrs: CategoryAttributes, row_of: dict[str, int], extra_exclude: tuple[str, ...] = ()
    ) -> np.ndarray | None:
        """Rows of the category that pass, or ``None`` when every row does (no filtering)."""
        n = len(attrs.in_stock)
        mask: np.ndarray | None = None
        if self.in_stock_only and not attrs.in_stock.all():
            mask = attrs.in_stock.copy()
        if self.price_min is not None or self.price_max is not None:
            price = attrs.price
            ok = ~np.isnan(price)
            if self.price_min is not None:
                ok &= price >= self.price_min
            if self.price_max is not None:
                ok &= price <= self.price_max
            mask = ok if mask is None else mask & ok
        equal = dict(self.attributes.items())
        conditions = [(f"attributes.{k}", v) for k, v in equal.items()]
        if self.brand is not None:
            conditions.append((BRAND, self.brand))
        for column, values in conditions:
            listed = values if isinstance(values, list) else [values]
            col = attrs.columns.get(column)
            ok = col.matching(map(text, listed)) if col is not None else np.zeros(n, bool)
            mask = ok if mask is None else mask & ok
        rows = [row_of[p] for p in (*self.exclude, *extra_exclude) if p in row_of]
        if rows:
            if mask is None:
                mask = np.ones(n, bool)
            mask[rows] = False
        return mask


DEFAULT_FILTER = ProductFilter()
