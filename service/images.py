"""Upload validation and decoding: every bad upload becomes a 4xx that names the problem.

Bytes are read in chunks up to the configured limit (never more), the header is checked for
format and pixel count before any pixel is decoded (decompression bombs), and decoding errors
(truncated or corrupt files) are reported instead of surfacing as a 500.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from fastapi import HTTPException, UploadFile, status
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# Formats Pillow names apart that are JPEG files to everyone else: MPO (phones' and cameras'
# multi-picture JPEGs, whose first frame is an ordinary JPEG) decodes as that first frame.
JPEG_VARIANTS = ("MPO",)
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


def decode_image(upload: Upload, max_pixels: int, min_size: int = 0) -> Image.Image:
    """Decode ``upload`` into a loaded RGB image, or raise the 4xx that says what is wrong.

    A JPEG at least twice ``min_size`` on both sides is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling), never below ``min_size``: a 12-megapixel phone photo then decodes
    several times faster and into a small fraction of the memory (docs/performance.md).
    Smaller photos (all of the training data) decode exactly as before.
    """
    name = upload.filename
    with warnings.catch_warnings():
        # Pillow's own bomb check warns or raises by its global limit; ours is the configured one.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(upload.data))
        except Image.DecompressionBombError as exc:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{name}: decompression bomb: {exc} (the limit is {max_pixels} pixels)",
            ) from None
        except UnidentifiedImageError:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"{name}: not an image (expected {', '.join(ALLOWED_FORMATS)})",
            ) from None
        except Exception as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{name}: truncated or corrupt image header: {exc}",
            ) from None
        if image.format in JPEG_VARIANTS and isinstance(image, JpegImagePlugin.JpegImageFile):
            image.format = "JPEG"
        if image.format not in ALLOWED_FORMATS:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                f"{name}: unsupported image format {image.format} "
                f"(expected {', '.join(ALLOWED_FORMATS)})",
            )
        pixels = image.width * image.height
        if pixels > max_pixels:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{name}: image of {image.width}x{image.height} = {pixels} pixels is over the "
                f"limit of {max_pixels} pixels (or a decompression bomb)",
            )
        if min_size > 0 and image.format == "JPEG":
            image.draft("RGB", (min_size, min_size))
        try:
            image.load()
        except Exception as exc:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{name}: truncated or corrupt image: {exc}",
            ) from None
    # Phone photos are stored sideways with an EXIF orientation; browsers honour it, so must we.
    # In place: the usual upright photo is not copied.
    ImageOps.exif_transpose(image, in_place=True)
    return image if image.mode == "RGB" else image.convert("RGB")
