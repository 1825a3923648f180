"""The one image decoder of every path: service uploads, ``ctl batch-score``, ``ctl index``, the
training feature cache and ``ctl download``'s check. Torch-free: Pillow only.

One contract, whatever the bytes: an RGB image with its pixels loaded, or :class:`DecodeError`
saying what is wrong (its ``kind`` tells a caller which answer to give: the service maps it to
415, 413 or 422). The header is checked for format and pixel count before any pixel is decoded
(decompression bombs). A broken EXIF block is no reason to refuse a photo: when its orientation
cannot be read, the pixels are used as stored and the problem is logged at debug level.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Literal

from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError

log = logging.getLogger(__name__)

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
# Formats Pillow names apart that are JPEG files to everyone else: MPO (phones' and cameras'
# multi-picture JPEGs, whose first frame is an ordinary JPEG) decodes as that first frame.
JPEG_VARIANTS = ("MPO",)
DRAFT_MARGIN = 2
"""A big JPEG decodes at the smallest DCT scale keeping both sides at least this many times the
model input: a 12 MP phone photo then took 100-190 ms instead of 630-800 ms (1/4 scale), and
after the resize to 224 its pixels differ from a full decode's by 0.15-0.93 of 255 on average;
a scale of 1x the input (1/8) saved no more time and differed by 1.0-2.4 (5 photos)."""
MAX_IMAGE_PIXELS = 40_000_000
"""The default pixel limit (``CTL_MAX_IMAGE_PIXELS`` sets the service's and the jobs')."""

# EXIF orientation -> the transpose that shows the photo upright (the table of Pillow's
# ImageOps.exif_transpose, which also rewrites the EXIF block and so fails on broken tags
# after it has already turned the pixels; only the pixels are needed here).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Pillow keeps a big image in blocks of 16 MiB, under glibc's largest mmap threshold (32 MiB):
# freed, they stay in the malloc arena of the thread that decoded, so each decoding thread kept
# the memory of the largest image it had decoded. Decoding a 6000x6600 PNG 24 times, one at a
# time, in 6 threads: RSS 996 MiB at the peak, 881 MiB after. Blocks of 64 MiB are mmapped and
# given back when freed: 356 and 228 MiB. Small images (under a block) are allocated as before.
Image.core.set_block_size(64 * 1024 * 1024)

DecodeErrorKind = Literal["unsupported", "too_large", "corrupt"]


class DecodeError(ValueError):
    """Bytes that are no usable image. ``kind``: ``"unsupported"`` (not an image, or not an
    allowed format), ``"too_large"`` (over the pixel limit, or a decompression bomb) or
    ``"corrupt"`` (truncated or broken); the message names the image and the problem."""

    def __init__(self, message: str, kind: DecodeErrorKind) -> None:
        super().__init__(message)
        self.kind = kind


def open_image(data: bytes, max_pixels: int, min_size: int = 0, name: str = "image") -> Image.Image:
    """The image's header, checked (format, pixel count: every format, JPEG included), with no
    pixel decoded yet. ``min_size`` is the model input: a JPEG at least ``2 * DRAFT_MARGIN``
    times it on both sides is set to decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling),
    never below ``DRAFT_MARGIN * min_size``, and ``size`` is then the reduced one.

    What :func:`decode_image` does first; callers that must budget for the pixels before
    decoding them read ``size`` here (:func:`decoded_bytes`).
    """
    with warnings.catch_warnings():
        # Pillow's own bomb check warns or raises by its global limit; ours is the one given.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise DecodeError(
                f"{name}: decompression bomb: over the limit of {max_pixels} pixels", "too_large"
            ) from None
        except UnidentifiedImageError:
            raise DecodeError(
                f"{name}: not an image (expected {', '.join(ALLOWED_FORMATS)})", "unsupported"
            ) from None
        except Exception as exc:
            raise DecodeError(
                f"{name}: truncated or corrupt image header: {exc}", "corrupt"
            ) from None
    if image.format in JPEG_VARIANTS and isinstance(image, JpegImagePlugin.JpegImageFile):
        image.format = "JPEG"
    if image.format not in ALLOWED_FORMATS:
        raise DecodeError(
            f"{name}: unsupported image format {image.format} "
            f"(expected {', '.join(ALLOWED_FORMATS)})",
            "unsupported",
        )
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise DecodeError(
            f"{name}: image of {image.width}x{image.height} = {pixels} pixels is over the "
            f"limit of {max_pixels} pixels",
            "too_large",
        )
    if pixels < 1:
        raise DecodeError(f"{name}: empty image ({image.width}x{image.height})", "corrupt")
    if min_size > 0 and image.format == "JPEG":
        try:
            image.draft("RGB", (DRAFT_MARGIN * min_size, DRAFT_MARGIN * min_size))
        except Exception as exc:
            raise DecodeError(f"{name}: truncated or corrupt image: {exc}", "corrupt") from None
    return image


def decoded_bytes(image: Image.Image) -> int:
    """Memory the pixels of an opened image take at most while they are decoded: Pillow keeps
    4 bytes a pixel, and the upright or RGB copy exists beside the decoded one for a moment."""
    return 2 * 4 * image.width * image.height


def decode_image(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, min_size: int = 0, name: str = "image"
) -> Image.Image:
    """``data`` as a loaded RGB image, upright by its EXIF orientation, or :class:`DecodeError`.

    ``min_size``: the model input side of the caller; a big JPEG is decoded at a reduced scale
    that keeps both sides at least ``DRAFT_MARGIN`` times that (:func:`open_image`). 0: full
    size (what a caller that crops the photo needs: its boxes are in the full photo's pixels).
    """
    image = open_image(data, max_pixels, min_size, name)
    with warnings.catch_warnings(record=True) as caught:
        # Pillow warns of what it skips in a damaged file (tags, chunks); kept for debugging.
        warnings.simplefilter("always")
        try:
            image.load()
        except Exception as exc:
            raise DecodeError(f"{name}: truncated or corrupt image: {exc}", "corrupt") from None
        try:
            # Phone photos are stored sideways with an EXIF orientation; browsers honour it, so
            # must we. Any failure to read it (phones and editors write broken EXIF) leaves
            # the pixels as stored.
            method = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
        except Exception as exc:
            log.debug("%s: unreadable EXIF ignored (pixels used as stored): %r", name, exc)
            method = None
    for warning in caught:
        log.debug("%s: %s", name, warning.message)
    try:
        if method is not None:
            image = image.transpose(method)
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as exc:
        raise DecodeError(f"{name}: corrupt image: {exc}", "corrupt") from None
