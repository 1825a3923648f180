"""Photos whose EXIF is broken the ways the outside probe found (issue 31): Pillow's own EXIF
handling raises ``SyntaxError`` or ``struct.error`` on them."""

from __future__ import annotations

import io
import struct

from PIL import Image

SIZE = (40, 20)

WEBP_EXIF = b"XX\x00*\x00\x00\x00\x08" + b"\x00" * 30
"""Not a TIFF header at all: reading the EXIF raises ``SyntaxError``."""


def ascii_width_exif() -> bytes:
    """Big-endian TIFF, two entries: ImageWidth (0x0100) stored as ASCII ``"Cam"`` and
    Orientation (0x0112) = 6; writing it back (as ``exif_transpose`` does) raises
    ``struct.error``."""
    entries = struct.pack(">HHI4s", 0x0100, 2, 4, b"Cam\x00")
    entries += struct.pack(">HHIH2x", 0x0112, 3, 1, 6)
    return b"MM\x00*" + struct.pack(">IH", 8, 2) + entries + b"\x00\x00\x00\x00"


def broken_exif_photos() -> dict[str, bytes]:
    """Name -> bytes of each broken-EXIF photo: a WebP, a JPEG and a PNG (40x20, stored)."""
    image = Image.new("RGB", SIZE, (200, 30, 30))
    out = {}
    for name, fmt, exif in (
        ("broken.webp", "WEBP", WEBP_EXIF),
        ("broken.jpg", "JPEG", b"Exif\x00\x00" + ascii_width_exif()),
        ("broken.png", "PNG", ascii_width_exif()),
    ):
        buf = io.BytesIO()
        image.save(buf, fmt, exif=exif)
        out[name] = buf.getvalue()
    return out
