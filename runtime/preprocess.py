"""Image preprocessing shared by training (torch) and serving (ONNX Runtime); numpy + Pillow only.

The spec is saved as ``preprocess.json`` beside the exported encoders, so the service
prepares pixels exactly as the feature cache did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class PreprocessSpec:
    """How an RGB image becomes the encoder's float input (N, 3, size, size).

    ``resize``: ``"stretch"`` resizes the whole image to size x size (keeps all of a wide crop);
    ``"pad"`` fits it inside, keeping the aspect ratio, and pads with ``fill``.
    """

    size: int = 224
    resize: str = "stretch"
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    fill: tuple[int, int, int] = field(default=(127, 127, 127))

    def key(self) -> str:
        """A stable string that changes whenever the preprocessing changes (cache keys)."""
        return json.dumps(asdict(self), sort_keys=True)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> PreprocessSpec:
        kw = json.loads(path.read_text())
        for key in ("mean", "std", "fill"):  # JSON lists, tuples here
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


def resize_image(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """RGB image of exactly ``spec.size`` x ``spec.size``."""
    if spec.resize not in ("stretch", "pad"):
        raise ValueError(f"unknown resize mode {spec.resize!r}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    s = spec.size
    if image.size == (s, s):
        return image  # already prepared (Encoder.prepare): both modes would give it back as is
    resample = _RESAMPLE[spec.interpolation]
    if spec.resize == "stretch":
        return image.resize((s, s), resample)
    scale = s / max(image.width, image.height)  # "pad": fit inside, keep the aspect ratio
    w = max(1, round(image.width * scale))
    h = max(1, round(image.height * scale))
    canvas = Image.new("RGB", (s, s), spec.fill)
    canvas.paste(image.resize((w, h), resample), ((s - w) // 2, (s - h) // 2))
    return canvas


def to_array(image: Image.Image, spec: PreprocessSpec, flip: bool = False) -> np.ndarray:
    """One image as a normalized float32 array (3, size, size)."""
    arr = np.asarray(resize_image(image, spec), dtype=np.float32)
    if flip:
        arr = arr[:, ::-1, :]
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    normalized: np.ndarray = (arr - mean) / std
    return np.ascontiguousarray(normalized.transpose(2, 0, 1))


def to_batch(images: Sequence[Image.Image], spec: PreprocessSpec, flip: bool = False) -> np.ndarray:
    """A batch (N, 3, size, size) float32."""
    if not images:
        return np.zeros((0, 3, spec.size, spec.size), np.float32)
    return np.stack([to_array(im, spec, flip) for im in images])
