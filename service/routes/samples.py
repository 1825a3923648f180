"""A few sample scenes for the web page, served by name (never by path)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from runtime.errors import quote
from service.config import Settings
from service.deps import SamplesDep
from service.errors import responses
from service.schemas import Sample

router = APIRouter(tags=["samples"])

MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
}


def find_samples(settings: Settings) -> dict[str, Path]:
    """The first ``samples_count`` images of the samples directory, by file name."""
    root = settings.samples_dir or settings.data_dir / "images" / "scenes"
    if not root.is_dir():
        return {}
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in MEDIA_TYPES)
    return {p.name: p for p in files[: settings.samples_count]}


@router.get("/samples", response_model=list[Sample])
async def list_samples(samples: SamplesDep) -> list[dict]:
    """Sample scene photos to try the service with (empty when none are configured)."""
    return [{"name": name, "url": f"/samples/{name}"} for name in samples]


@router.get(
    "/samples/{name}",
    response_class=FileResponse,
    responses=responses({404: "no such sample", 422: "a mistyped path"}),
)
async def get_sample(name: str, samples: SamplesDep) -> FileResponse:
    """One sample image; only names listed by ``GET /samples`` resolve, so no path escapes."""
    path = samples.get(name)
    if path is None or not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no sample named {quote(name)}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lower()])
