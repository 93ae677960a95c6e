"""Models: a registry of architectures, all wrapped the same way.

Every model that vetset builds is an :class:`ImageClassifier`: it takes float images in
[0, 1], NCHW, normalises them with a built-in :class:`Normalize` layer, and returns logits.
The architecture itself is ``model.net``, so detectors can hook its convolutions (e.g.
``model.net.layer4[1].conv1`` in PreAct-ResNet18) and read penultimate features with
``model.features(x)`` or :func:`penultimate_features`.

Names: ``small_cnn``, ``preact_resnet18`` and ``preact_resnet_small`` are registered in :data:`MODELS`; any
``torchvision:<name>`` or ``timm:<name>`` is built by name with random weights (those
libraries are imported only when such a model is asked for). Pretrained weights come only
from a local file (``pretrained=PATH``); nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.errors import VetsetError
from pipelines.registry import Registry

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# name -> factory(num_classes, input_size, **kwargs) -> nn.Module (the bare net, no normalisation)
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, so they travel with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class ImageClassifier(nn.Module):
    """Normalize + net. Input float [0, 1] NCHW, output logits."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.norm = Normalize(mean, std)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of the final linear layer), flattened to (N, D)."""
        return penultimate_features(self, x)


def head_module(net: nn.Module) -> nn.Linear:
    """The final linear classifier of ``net``: its ``head_name`` attribute if it has one,
    else the last ``nn.Linear`` in module order (true for torchvision and timm models)."""
    if isinstance(net, ImageClassifier):
        net = net.net
    name = getattr(net, "head_name", None)
    if name:
        return net.get_submodule(name)
    last = None
    for module in net.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise VetsetError(f"{type(net).__name__} has no linear head to take features from")
    return last


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``x`` and return what went into its final linear layer (N, D).

    Works for any model built here (and any torchvision/timm classifier) by a forward
    pre-hook on the head, so it sees exactly what the classifier sees.
    """
    if hasattr(model, "inner") and not isinstance(model, ImageClassifier):
        model = model.inner  # an inference wrapper (see trainers.saved.WRAPPERS)
    captured: list[torch.Tensor] = []
    handle = head_module(model).register_forward_pre_hook(lambda _m, inp: captured.append(inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1)


# --------------------------------------------------------------------------- small CNN


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Four 3x3 conv + BN + ReLU stages with max-pooling, global average pool, linear head.

    Sized for the CPU: with width 24 (channels 24-48-96-192) and channels_last it trains an
    epoch of 10,000 32x32 images in about 5 s on 2 cores (see docs/benchmarks.md). Convs are ``conv1``..``conv4`` (each a Sequential conv/bn/relu).
    """

    head_name = "head"

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 24):
        super().__init__()
        w = width
        self.conv1 = _conv_bn(in_channels, w)
        self.conv2 = _conv_bn(w, 2 * w)
        self.conv3 = _conv_bn(2 * w, 4 * w)
        self.conv4 = _conv_bn(4 * w, 8 * w)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8 * w, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        x = self.pool(self.conv3(x))
        x = self.conv4(x)
        return self.gap(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@MODELS.register("small_cnn")
def small_cnn(num_classes: int, input_size: tuple[int, int] = (32, 32), width: int = 24) -> nn.Module:
    return SmallCNN(num_classes, width=width)


# --------------------------------------------------------------------------- PreAct-ResNet18


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016), as in BackdoorBench's PreAct-ResNet18."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """The CIFAR PreAct-ResNet18 (3x3 stem, no max-pool), module names as in BackdoorBench:
    ``conv1``, ``layer1``..``layer4`` (two :class:`PreActBlock` each, with ``conv1``/``conv2``),
    ``avgpool``, ``linear``."""

    head_name = "linear"

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64,
                 blocks: tuple[int, int, int, int] = (2, 2, 2, 2)):
        super().__init__()
        w = int(width)
        self.in_planes = w
        self.conv1 = nn.Conv2d(in_channels, w, 3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(w, blocks[0], 1)
        self.layer2 = self._make_layer(2 * w, blocks[1], 2)
        self.layer3 = self._make_layer(4 * w, blocks[2], 2)
        self.layer4 = self._make_layer(8 * w, blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * w, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.forward_features(x))


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int, input_size: tuple[int, int] = (32, 32)) -> nn.Module:
    return PreActResNet18(num_classes)


@MODELS.register("preact_resnet_small")
def preact_resnet_small(num_classes: int, input_size: tuple[int, int] = (32, 32), width: int = 16) -> nn.Module:
    """A small residual net for the CPU: PreAct-ResNet18's layout with one block per stage
    and channels ``width``-2w-4w-8w (16-32-64-128 by default: 0.31 M parameters against
    small_cnn's 0.22 M, about twice its multiply-adds), so that the purification methods that
    rely on a residual net's redundancy (pruning, re-initialisation, a polarizer before the
    last block) can be measured on the CPU. Module names as in PreAct-ResNet18
    (``layer4.0.conv1`` ...)."""
    return PreActResNet18(num_classes, width=width, blocks=(1, 1, 1, 1))


# --------------------------------------------------------------------------- torchvision / timm


def _torchvision_net(name: str, num_classes: int, input_size: tuple[int, int],
                     cifar_stem: bool | None = None) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise VetsetError(f"model 'torchvision:{name}' needs torchvision, which is not installed") from exc
    try:
        net = tvm.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, KeyError) as exc:
        raise VetsetError(f"torchvision has no model {name!r}") from exc
    if cifar_stem is None:
        cifar_stem = min(input_size) <= 64
    if cifar_stem and isinstance(getattr(net, "conv1", None), nn.Conv2d) and hasattr(net, "maxpool"):
        # ResNet-style stem for small images: 3x3 stride-1 conv, no max-pool
        old = net.conv1
        net.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    return net


def _timm_net(name: str, num_classes: int, input_size: tuple[int, int]) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise VetsetError(f"model 'timm:{name}' needs timm, which is not installed") from exc
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:
        raise VetsetError(f"timm cannot build {name!r}: {exc}") from exc


def model_names() -> list[str]:
    """Registered names (plus the two open-ended prefixes)."""
    return MODELS.names() + ["torchvision:<name>", "timm:<name>"]


def build_net(name: str, num_classes: int, input_size: tuple[int, int] = (32, 32), **kwargs) -> nn.Module:
    """The bare architecture (no normalisation) by name."""
    input_size = (int(input_size[0]), int(input_size[1]))
    if name.startswith("torchvision:"):
        return _torchvision_net(name.split(":", 1)[1], num_classes, input_size, **kwargs)
    if name.startswith("timm:"):
        return _timm_net(name.split(":", 1)[1], num_classes, input_size, **kwargs)
    return MODELS.get(name)(num_classes, input_size, **kwargs)


def load_pretrained(net: nn.Module, path: str | Path) -> None:
    """Load weights from a local file into ``net`` (.safetensors, or a .pt/.pth state dict
    read with ``weights_only=True``). Tensors whose shape differs (a head for another number
    of classes) are skipped; a ``net.``/``module.`` prefix is stripped."""
    path = Path(path)
    if not path.is_file():
        raise VetsetError(f"pretrained weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    own = net.state_dict()
    clean = {}
    for key, value in state.items():
        for prefix in ("module.", "net."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        if key in own and own[key].shape == value.shape:
            clean[key] = value
    if not clean:
        raise VetsetError(f"no tensor in {path} matches the model's parameters")
    net.load_state_dict(clean, strict=False)


def build_model(name: str, num_classes: int, input_size: Sequence[int] = (32, 32),
                mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                *, pretrained: str | Path | None = None, seed: int | None = None,
                **kwargs) -> ImageClassifier:
    """Build ``name`` as an :class:`ImageClassifier` (float [0,1] NCHW in, logits out).

    ``seed`` makes the random initialisation repeatable without touching the global RNG.
    ``pretrained`` is a local weights file; nothing is ever downloaded.
    Extra keyword arguments go to the architecture's factory (e.g. ``width`` for small_cnn,
    ``cifar_stem`` for torchvision ResNets).
    """
    input_size = (int(input_size[0]), int(input_size[1]))
    if seed is None:
        net = build_net(name, num_classes, input_size, **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_net(name, num_classes, input_size, **kwargs)
    if pretrained is not None:
        load_pretrained(net, pretrained)
    return ImageClassifier(net, mean, std)


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
