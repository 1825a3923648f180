"""Upload decoding details that the HTTP tests do not reach directly."""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from service.images import Upload, decode_image


def _upload(data: bytes) -> Upload:
    return Upload("photo.jpg", data, hashlib.sha256(data).hexdigest())


def test_exif_orientation_is_applied() -> None:
    """A phone photo stored 40x20 with orientation 6 (rotate 90°) is seen upright, 20x40."""
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_image(_upload(buf.getvalue()), max_pixels=10_000).size == (20, 40)


def test_grayscale_png_becomes_rgb() -> None:
    buf = io.BytesIO()
    Image.new("L", (9, 7), 128).save(buf, "PNG")
    out = decode_image(_upload(buf.getvalue()), max_pixels=10_000)
    assert out.mode == "RGB" and out.size == (9, 7)
