"""Upload decoding details that the HTTP tests do not reach directly."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi import HTTPException
from PIL import Image
from service_support import scene_files, tiny_artifacts

from runtime.encoder import OnnxEncoder
from service.images import Upload, decode_upload


def _upload(data: bytes) -> Upload:
    return Upload("photo.jpg", data, hashlib.sha256(data).hexdigest())


def test_exif_orientation_is_applied() -> None:
    """A phone photo stored 40x20 with orientation 6 (rotate 90°) is seen upright, 20x40."""
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif.tobytes())
    assert decode_upload(_upload(buf.getvalue()), max_pixels=10_000).size == (20, 40)


def test_grayscale_png_becomes_rgb() -> None:
    buf = io.BytesIO()
    Image.new("L", (9, 7), 128).save(buf, "PNG")
    out = decode_upload(_upload(buf.getvalue()), max_pixels=10_000)
    assert out.mode == "RGB" and out.size == (9, 7)


def _jpeg(image: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **params)
    return buf.getvalue()


def test_a_big_jpeg_is_decoded_at_a_reduced_scale_never_below_twice_min_size() -> None:
    big = Image.new("RGB", (2000, 1000), (30, 140, 200))
    # min(2000 // 448, 1000 // 448) = 2: decoded at 1/2 scale (1/4 would be under 448 high)
    assert decode_upload(_upload(_jpeg(big)), 10_000_000, min_size=224).size == (1000, 500)
    # min(2000 // 224, 1000 // 224) = 4: 1/4 scale
    assert decode_upload(_upload(_jpeg(big)), 10_000_000, min_size=112).size == (500, 250)
    assert decode_upload(_upload(_jpeg(big)), 10_000_000).size == (2000, 1000)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_upload(_upload(_jpeg(big, exif=exif.tobytes())), 10_000_000, min_size=112)
    assert upright.size == (250, 500)
    png = io.BytesIO()
    big.save(png, "PNG")
    assert decode_upload(_upload(png.getvalue()), 10_000_000, min_size=224).size == (2000, 1000)
    # The pixel limit still guards every format, whatever the reduced scale would be.
    for data in (png.getvalue(), _jpeg(big)):
        with pytest.raises(HTTPException) as refused:
            decode_upload(_upload(data), 1_000_000, min_size=224)
        assert refused.value.status_code == 413


def test_photos_under_twice_min_size_decode_exactly_as_before(stl_dir: Path) -> None:
    """Every training photo is under 448 px on a side: serving decodes them bit for bit."""
    for path in scene_files(stl_dir, 5):
        data = path.read_bytes()
        reduced = np.asarray(decode_upload(_upload(data), 10_000_000, min_size=224))
        full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(reduced, full)


def test_a_reduced_decode_embeds_like_the_full_one(stl_dir: Path) -> None:
    encoder = OnnxEncoder.from_artifacts(tiny_artifacts(stl_dir), device="cpu")
    scene = Image.open(scene_files(stl_dir, 1)[0]).convert("RGB")
    data = _jpeg(scene.resize((scene.width * 4, scene.height * 4), Image.Resampling.BICUBIC))
    reduced = decode_upload(_upload(data), 10_000_000, min_size=encoder.input_size)
    full = decode_upload(_upload(data), 10_000_000)
    assert reduced.width < full.width
    a, b = (encoder.embed_scenes([encoder.prepare(im)])[0].f_s for im in (reduced, full))
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosine > 0.98, cosine
