"""Architecture changes a purification needs at inference, rebuilt by ``load_model`` from
``config.json`` (registered in :data:`trainers.saved.MODIFICATIONS`; no pickle).

``insert_polarizer``: NPD's neural polarizer, a 1x1 convolution (no bias) + BatchNorm put in
front of one module of the network (``net.layer4.1.conv1`` for PreAct-ResNet18). The module
at ``path`` becomes ``Sequential(polarizer=Polarizer, module=<the original>)``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from pipelines.errors import VetsetError

from ..saved import MODIFICATIONS


class Polarizer(nn.Module):
    """1x1 conv (identity initialisation, no bias) followed by BatchNorm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    try:
        parent = model.get_submodule(parent_path) if parent_path else model
        parent.get_submodule(name)
    except AttributeError:
        raise VetsetError(f"the model has no module {path!r}") from None
    return parent, name


@MODIFICATIONS.register("insert_polarizer")
def insert_polarizer(model: nn.Module, path: str, channels: int) -> None:
    parent, name = _parent(model, path)
    original = parent.get_submodule(name)
    inserted = nn.Sequential(OrderedDict(polarizer=Polarizer(int(channels)), module=original))
    setattr(parent, name, inserted)


def polarizer_of(model: nn.Module, path: str) -> Polarizer:
    return model.get_submodule(path).polarizer


def default_polarizer_path(model: nn.Module) -> str:
    """``net.layer4.1.conv1`` when the net has PreAct-ResNet's layout (specs/defenses.md),
    else the last convolution with a kernel larger than 1x1 (``net.conv4.0`` in small_cnn)."""
    try:
        model.get_submodule("net.layer4.1.conv1")
        return "net.layer4.1.conv1"
    except AttributeError:
        pass
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1:
            last = name
    if last is None:
        raise VetsetError("NPD needs a convolution to put the polarizer in front of; the model has none")
    return last
