"""Upload reading and decoding: every bad upload becomes a 4xx that names the problem.

Bytes are read up to the configured limit (never more); decoding is the one decoder of every
path (``runtime.decode``), whose errors become the 4xx of their kind instead of a 500.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import HTTPException, UploadFile, status
from PIL import Image

from runtime.decode import DecodeError, decode_image

MAX_NAME = 128
"""Characters of an upload's file name kept (it is echoed in errors and batch items)."""


@dataclass(frozen=True)
class Upload:
    """The raw bytes of one uploaded file and their sha256 (the cache identity of a scene)."""

    filename: str
    data: bytes
    sha256: str


def too_large(limit: int) -> HTTPException:
    """The 413 for a body or file over ``limit`` bytes."""
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE, f"upload is larger than the limit of {limit} bytes"
    )


async def read_upload(file: UploadFile, max_bytes: int) -> Upload:
    """Read ``file`` fully but never more than ``max_bytes`` (413 beyond, 422 when empty).

    One read of at most ``max_bytes + 1`` bytes: the parsed form has the file (spooled to disk
    when big), so this is the one copy in memory, not chunks plus their join (twice the size).
    """
    name = (file.filename or "upload")[:MAX_NAME]  # it is echoed in errors and batch items
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    if not data:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{name}: the file is empty")
    return Upload(name, data, hashlib.sha256(data).hexdigest())


DECODE_STATUS = {
    "unsupported": status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    "too_large": status.HTTP_413_CONTENT_TOO_LARGE,
    "corrupt": status.HTTP_422_UNPROCESSABLE_CONTENT,
}
"""The answer to each kind of :class:`runtime.decode.DecodeError`."""


def decode_upload(upload: Upload, max_pixels: int, min_size: int = 0) -> Image.Image:
    """``upload`` decoded by the one decoder of every path (:func:`runtime.decode.decode_image`:
    RGB, upright, a big JPEG at a reduced scale never below ``min_size``), or the 4xx that
    says what is wrong."""
    try:
        return decode_image(upload.data, max_pixels, min_size, upload.filename)
    except DecodeError as exc:
        raise HTTPException(DECODE_STATUS[exc.kind], str(exc)) from None
