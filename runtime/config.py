"""The settings of the bottom layer: where things live, the model, and where it runs.

Each layer's settings extend the one below (``index.config.IndexSettings``, then
``service.config.Settings``; ``training.config.TrainingSettings`` beside them), all read from the
same ``CTL_*`` environment variables, so a lower layer's command needs no import from above.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from runtime.decode import MAX_IMAGE_PIXELS

CHECKOUT = Path(__file__).resolve().parent.parent


def shared_dir(name: str) -> Path | None:
    """``../shared/NAME`` beside the checkout or the working dir, the first that exists."""
    found = (b.parent / "shared" / name for b in (CHECKOUT, Path.cwd()))
    return next((d for d in found if d.is_dir()), None)


class RuntimeSettings(BaseSettings):
    """Paths, the model's training defaults, and the device and threads it runs on."""

    model_config = SettingsConfigDict(env_prefix="CTL_", env_file=None, extra="ignore")

    # Where things live.
    data_dir: Path = Field(default_factory=lambda: shared_dir("stl-fashion") or Path("data"))
    work_dir: Path = Path("work")
    artifacts_dir: Path = Path("artifacts")
    log_level: str = "INFO"

    # Model and training defaults.
    backbone: str = "efficientnet_lite0"
    backbone_weights: Path | None = None
    embedding_dim: int = 128
    seed: int = 0

    # Where the encoders run.
    device: str = "auto"  # auto | cpu | cuda
    inference_threads: int = 0  # ONNX Runtime threads of an encoder call that runs alone (0: all)

    # The limits of the one decoder (runtime/decode.py), the same for the service and the jobs.
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = MAX_IMAGE_PIXELS
