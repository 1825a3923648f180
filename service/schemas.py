"""Response models (request bodies are multipart forms, declared on the routes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from index.attributes import ProductAttributes

_PRODUCT_EXAMPLE: dict[str, JsonValue] = {
    "id": "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "category": "Shoes",
    "rank": 1,
    "d_star": 0.412,
    "d_global": 0.633,
    "d_local": 0.571,
    "image_url": "/products/0a1b2c3d4e5f60718293a4b5c6d7e8f9/image",
    "title": "Leather ankle boot",
    "price": 89.9,
    "currency": "EUR",
    "in_stock": True,
}


class Versions(BaseModel):
    """Which model and index produced an answer (results are cached per version pair)."""

    model_version: str = Field(
        description="the exported model's version: 12 hex digits of its files' checksums and "
        "its precision (fp32 or int8)",
        examples=["3f2a9c1d7b6e-fp32"],
    )
    index_version: str = Field(
        description="the index version (UTC time to the microsecond and a random suffix)",
        examples=["20261125T170000123456Z-9c1d"],
    )


class Distances(BaseModel):
    """CTL distances of a product to a scene: d* = (d_global + d_local) / 2 (lower is better)."""

    d_star: float
    d_global: float
    d_local: float


class Attributed(ProductAttributes):
    """A product answer carries what the shop said about the product (``PATCH
    /admin/products/{id}``, ``ctl catalog``); absent fields were never given."""

    model_config = ConfigDict(extra="ignore")

    in_stock: bool = Field(default=True, description="false: marked out of stock")


class Recommended(Attributed, Distances):
    """One recommended product."""

    model_config = ConfigDict(json_schema_extra={"examples": [_PRODUCT_EXAMPLE]})

    id: str
    category: str
    rank: int = Field(ge=1)
    image_url: str


class CompleteTheLook(Versions):
    """Recommendations for one scene and one category."""

    category: str
    k: int
    scene_sha256: str
    cached: bool = Field(description="whether the result came from the cache")
    products: list[Recommended]
    attention: list[list[float]] | None = Field(
        default=None,
        description="with explain=true: the category's attention over the grid x grid regions "
        "of the scene (rows top to bottom), summing to 1",
    )


class CompleteTheLookAll(Versions):
    """Recommendations for several categories from one pass through the encoder."""

    k: int
    scene_sha256: str
    cached: bool = Field(description="whether the scene embedding came from the cache")
    results: dict[str, list[Recommended]]


class ProductScore(Distances):
    """Distances of one requested product."""

    id: str
    category: str


class ScoreResponse(Versions):
    """Scores of the requested products; ids not in the catalog are listed, not fatal."""

    scene_sha256: str
    scores: list[ProductScore]
    unknown_ids: list[str]


class SceneCreated(BaseModel):
    """A stored scene: ask about it with ``GET /scenes/{scene_id}/...`` until it expires."""

    scene_id: str = Field(
        description="the sha256 of the photo's bytes",
        examples=["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
    )
    expires_in: int = Field(
        description="seconds the scene is kept at most, from now (posting it again starts the "
        "expiry anew; it may be evicted sooner: then upload it again)",
        examples=[86400],
    )
    shared: bool = Field(
        description="whether every replica can answer for the scene; false when Redis was "
        "unreachable and only the replica that answered keeps it (post it again later)",
        examples=[True],
    )


class ItemError(BaseModel):
    """Why one item of a batch failed (the others are unaffected)."""

    status: int = Field(examples=[415])
    detail: str = Field(examples=["shirt.txt: not an image (expected JPEG, PNG, WEBP)"])


class BatchItem(BaseModel):
    """The outcome for one uploaded scene of a batch."""

    index: int
    filename: str
    scene_sha256: str | None = None
    results: dict[str, list[Recommended]] | None = None
    error: ItemError | None = None


class BatchResponse(Versions):
    """One entry per uploaded scene, in upload order."""

    k: int
    items: list[BatchItem]


class SimilarProduct(Attributed):
    """A visually similar product: squared distance between unit product embeddings."""

    id: str
    category: str
    rank: int = Field(ge=1)
    distance: float
    image_url: str


class SimilarResponse(Versions):
    """Nearest products of one category by product embedding."""

    category: str
    k: int
    products: list[SimilarProduct]


class ProductInfo(Attributed):
    """A catalog product."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    k: _PRODUCT_EXAMPLE[k]
                    for k in ("id", "category", "image_url", "title", "price", "in_stock")
                }
            ]
        }
    )

    id: str
    category: str
    image_url: str


def image_url(product_id: str) -> str:
    """Every answer's ``image_url``: where the product's catalog photo is served."""
    return f"/products/{product_id}/image"


def product_info(product_id: str, category: str, attributes: Mapping[str, Any]) -> dict:
    """A :class:`ProductInfo` answer."""
    return {
        "id": product_id,
        "category": category,
        "image_url": image_url(product_id),
        **attributes,
    }


class Category(BaseModel):
    """A category that can be recommended and how many products it holds."""

    name: str = Field(examples=["Shoes"])
    count: int = Field(examples=[1727])


class Categories(Versions):
    """Every category of the current catalog."""

    categories: list[Category]


class Health(BaseModel):
    """The process is alive."""

    status: str = Field(examples=["ok"])


class Ready(Versions):
    """Model and index are loaded; where they run."""

    status: str = Field(examples=["ready"])
    precision: str = Field(description="the encoders' number format", examples=["int8"])
    providers: list[str] = Field(examples=[["CPUExecutionProvider"]])
    faiss_device: str = Field(description="where FAISS searches: cpu or cuda", examples=["cpu"])
    warnings: list[str] = Field(
        default_factory=list,
        description="GPU builds that are installed but run on the CPU",
        examples=[["faiss-gpu is installed but FAISS searches on the CPU: it sees no GPU"]],
    )
    cache: str = Field(examples=["redis"])
    categories: int


class Reloaded(Versions):
    """The versions now served, and the ones they replaced."""

    previous_model_version: str
    previous_index_version: str


class Sample(BaseModel):
    """A sample scene for the web page."""

    name: str = Field(examples=["0009907bb8b0b7a853a8c7dd5059b751.jpg"])
    url: str = Field(examples=["/samples/0009907bb8b0b7a853a8c7dd5059b751.jpg"])


class RowProblem(BaseModel):
    """A bad row of an import: its line and why."""

    line: int
    reason: str


class CatalogImport(Versions):
    """What an import did; ``index_version`` is new when products were embedded or removed."""

    rows: int
    added: int
    reembedded: int = Field(description="products whose image bytes or category changed")
    kept: int = Field(description="products that kept their vectors (attributes updated)")
    removed: int
    removed_ids: list[str]
    errors: list[RowProblem] = Field(description="bad rows skipped (skip_bad=true)")
    attributes_revision: int
    seconds: float


class CatalogUpdate(Versions):
    """A new index version with products added or removed; it is served at once."""

    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    products: int = Field(description="products in the new version")
