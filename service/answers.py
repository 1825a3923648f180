"""The complete-the-look answers, built once for the upload routes and the scene GETs."""

from __future__ import annotations

from service.recommender import Pipeline, Recommendations, attention_grid


def one_category(
    pipe: Pipeline,
    sha256: str,
    category: str,
    row: int,
    k: int,
    found: Recommendations,
    explain: bool,
) -> dict:
    """A ``CompleteTheLook`` answer."""
    attention = None
    if explain:
        assert found.embedding is not None  # asked for with need_embedding
        attention = attention_grid(found.embedding, row)
    return {
        **pipe.serving.versions(),
        "category": category,
        "k": k,
        "scene_sha256": sha256,
        "cached": found.cached,
        "products": found.results[category],
        "attention": attention,
    }


def all_categories(pipe: Pipeline, sha256: str, k: int, found: Recommendations) -> dict:
    """A ``CompleteTheLookAll`` answer."""
    return {
        **pipe.serving.versions(),
        "k": k,
        "scene_sha256": sha256,
        "cached": found.cached,
        "results": found.results,
    }
