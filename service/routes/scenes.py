"""Scenes as a resource: upload a photo once, then ask about it with GETs.

``POST /scenes`` stores the scene's embedding in the cache under its sha256 (the scene id) for
the current model; the GETs answer from it without an upload. A scene lives as long as its
cached embedding: evicted, expired, or made for a model no longer served, its id gets 404 and
the client uploads the photo again. With several workers or replicas, that cache is Redis.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from service.answers import all_categories, one_category
from service.deps import DEFAULT_K, check_categories, check_query, pipeline, unique
from service.errors import UNAVAILABLE, responses
from service.params import CATEGORIES, ERRORS, EXPLAIN, FilterQuery, ImageField, KQuery
from service.recommender import Pipeline
from service.schemas import CompleteTheLook, CompleteTheLookAll, SceneCreated

router = APIRouter(prefix="/scenes", tags=["scenes"])

SceneId = Annotated[
    str,
    Path(
        description="the id POST /scenes gave (the sha256 of the photo's bytes, 64 hex digits)",
        pattern="^[0-9a-f]{64}$",
    ),
]
GET_ERRORS = responses(
    {
        404: "unknown or expired scene id: upload the photo again (POST /scenes)",
        422: "unknown category (the valid ones are listed), k out of range, a mistyped "
        "parameter or scene id",
        503: UNAVAILABLE,
    }
)


@router.post(
    "",
    response_model=SceneCreated,
    status_code=status.HTTP_201_CREATED,
    responses={
        **ERRORS,
        **responses({501: "the service keeps no scenes: it has no cache (CTL_CACHE_SIZE=0)"}),
        200: {"model": SceneCreated, "description": "the scene was known"},
    },
)
async def create_scene(
    pipe: Annotated[Pipeline, pipeline("image")], image: ImageField, response: Response
) -> dict:
    """Embed the scene and keep it for follow-up questions: 201 with its id, or 200 with the
    same id when it is stored already (its expiry starts again). ``shared`` is false when Redis
    was unreachable: only this replica knows the scene until it is posted again. 501 where the
    service keeps no scenes (no cache)."""
    if not pipe.cache.keeps:
        raise HTTPException(
            status.HTTP_501_NOT_IMPLEMENTED,
            "this service keeps no scenes (CTL_CACHE_SIZE=0 without CTL_REDIS_URL); "
            "send the photo with each question to POST /complete-the-look instead",
        )
    async with pipe.upload(image) as upload:
        known, shared = await pipe.store_scene(upload)
    if known:
        response.status_code = status.HTTP_200_OK
    # Stored anew either way: the expiry starts again now.
    return {"scene_id": upload.sha256, "expires_in": pipe.settings.cache_ttl_s, "shared": shared}


@router.get("/{scene_id}/complete-the-look", response_model=CompleteTheLook, responses=GET_ERRORS)
async def scene_complete_the_look(
    pipe: Annotated[Pipeline, pipeline("category", "k", "explain", "filter")],
    scene_id: SceneId,
    category: Annotated[str, Query(description="a category name", examples=["Shoes"])],
    k: KQuery = DEFAULT_K,
    explain: Annotated[bool, Query(description=EXPLAIN)] = False,
    filter: FilterQuery = None,
) -> Response:
    """``POST /complete-the-look`` for a stored scene."""
    flt = check_query(k, filter, pipe.settings)
    wanted = check_categories(pipe.serving, [category])
    found = await pipe.recommend(scene_id, wanted, k, need_embedding=explain, flt=flt)
    return one_category(pipe, scene_id, category, wanted[category], k, found, explain)


@router.get(
    "/{scene_id}/complete-the-look/all", response_model=CompleteTheLookAll, responses=GET_ERRORS
)
async def scene_complete_the_look_all(
    pipe: Annotated[Pipeline, pipeline("k", "filter")],
    scene_id: SceneId,
    categories: Annotated[list[str] | None, Query(description=CATEGORIES)] = None,
    k: KQuery = DEFAULT_K,
    filter: FilterQuery = None,
) -> Response:
    """``POST /complete-the-look/all`` for a stored scene."""
    flt = check_query(k, filter, pipe.settings)
    wanted = check_categories(pipe.serving, unique(categories))
    found = await pipe.recommend(scene_id, wanted, k, flt=flt)
    return all_categories(pipe, scene_id, k, found)
