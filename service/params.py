"""The form and query fields several routes share, and the upload routes' error answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Form, Query, UploadFile

from service.errors import UPLOAD, responses

EXPLAIN = "add the category's attention over the scene's regions"
CATEGORIES = "categories to recommend (repeat the field); all when absent"

ImageField = Annotated[
    UploadFile,
    File(
        description="the scene photo (JPEG, PNG or WebP), not empty",
        json_schema_extra={"minLength": 1},
    ),
]
K = "how many products per category (1..max_k)"
# The schema's maximum is the default max_k; the app's schema says the configured one.
K_RANGE = {"minimum": 1, "maximum": 100}
KField = Annotated[int, Form(description=K, json_schema_extra=K_RANGE)]
KQuery = Annotated[int, Query(description=K, json_schema_extra=K_RANGE)]
FILTER = (
    "JSON object: which products may be recommended. Keys: in_stock_only (default true), "
    "exclude (product ids), brand (a value or a list), attributes (key -> a value or a list), "
    "price_min, price_max. Absent: in-stock products only"
)
FILTER_EXAMPLE = '{"brand": ["acme", "zeta"], "price_max": 100, "exclude": ["sku-1"]}'
FilterField = Annotated[str | None, Form(description=FILTER, examples=[FILTER_EXAMPLE])]
FilterQuery = Annotated[str | None, Query(description=FILTER, examples=[FILTER_EXAMPLE])]
ERRORS = responses(UPLOAD)
