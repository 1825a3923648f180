"""The complete-the-look answers, built once for the upload routes and the scene GETs, as JSON
written here: the products' JSON (as cached) goes in as it is, never decoded, validated or
encoded again; fields in the response models' order, so FastAPI would send the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic_core import to_json
from starlette.responses import Response

from service.recommender import Pipeline, Recommendations, attention_grid


def json_object(fields: Mapping[str, object]) -> bytes:
    """``fields`` as a JSON object, in order; ``bytes`` values are JSON already."""
    members = (
        to_json(name) + b":" + (value if isinstance(value, bytes) else to_json(value))
        for name, value in fields.items()
    )
    return b"{" + b",".join(members) + b"}"


def json_response(fields: Mapping[str, object]) -> Response:
    """A 200 with :func:`json_object` of ``fields``, as FastAPI sends a response model."""
    return Response(json_object(fields), media_type="application/json")


def one_category(
    pipe: Pipeline,
    sha256: str,
    category: str,
    row: int,
    k: int,
    found: Recommendations,
    explain: bool,
) -> Response:
    """A ``CompleteTheLook`` answer."""
    return json_response(
        {
            **pipe.serving.versions(),
            "category": category,
            "k": k,
            "scene_sha256": sha256,
            "cached": found.cached,
            "products": found.results[category],
            "attention": attention_grid(found.embedding, row) if explain else None,
        }
    )


def all_categories(pipe: Pipeline, sha256: str, k: int, found: Recommendations) -> Response:
    """A ``CompleteTheLookAll`` answer."""
    return json_response(
        {
            **pipe.serving.versions(),
            "k": k,
            "scene_sha256": sha256,
            "cached": found.cached,
            "results": json_object(found.results),
        }
    )
