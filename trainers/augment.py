"""Batch augmentation on the device: random crop with padding, horizontal flip, cutout.

Everything works on a whole batch tensor where it already lives (CPU or GPU), by index
arithmetic rather than per-image PIL work: the crop and the flip are one gather. The padding
is never materialised: reflected (or zero) coordinates are computed directly.

Layouts: ``"NHWC"`` (how vetset keeps decoded datasets, uint8) or ``"NCHW"`` (float batches
for the model). Any dtype works for crop/flip, so a defense can re-use them on float images
(e.g. PDB's defensive rows, whose trigger value 2.0 does not fit in uint8).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    """Defaults: the standard CIFAR recipe (RandomCrop(32, padding=4) + horizontal flip),
    as in BackdoorBench. ``pad_mode`` "reflect" is what fast CIFAR trainers use; "zero" is
    torchvision's RandomCrop default. ``cutout`` is the square side (0 = off; ABL's authors
    used Cutout 16 on CIFAR-10 in fine-tuning)."""

    crop: bool = True
    pad: int = 4
    pad_mode: str = "reflect"  # "reflect" | "zero"
    flip: bool = True
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.pad_mode not in ("reflect", "zero"):
            raise ValueError(f"pad_mode must be 'reflect' or 'zero', got {self.pad_mode!r}")

    @property
    def active(self) -> bool:
        return (self.crop and self.pad > 0) or self.flip or self.cutout > 0


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect coordinates into [0, size) without repeating the edge (numpy 'reflect')."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def _split(x: torch.Tensor, layout: str) -> tuple[int, int, int]:
    if x.ndim != 4:
        raise ValueError(f"expected a 4-d batch, got shape {tuple(x.shape)}")
    if layout == "NHWC":
        return x.shape[0], x.shape[1], x.shape[2]
    if layout == "NCHW":
        return x.shape[0], x.shape[2], x.shape[3]
    raise ValueError(f"layout must be NHWC or NCHW, got {layout!r}")


def crop_flip(x: torch.Tensor, *, pad: int = 4, pad_mode: str = "reflect", flip: bool = True,
              crop: bool = True, generator: torch.Generator | None = None,
              layout: str = "NHWC") -> torch.Tensor:
    """Random crop of the padded image back to its size, and random horizontal flip (p 0.5),
    per sample, as one gather. Returns a new tensor in the same layout and dtype."""
    n, h, w = _split(x, layout)
    dev = x.device
    if n == 0 or not ((crop and pad > 0) or flip):
        return x
    if crop and pad > 0:
        offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=dev)
        dy, dx = offs[:, 0] - pad, offs[:, 1] - pad
    else:
        dy = dx = torch.zeros(n, dtype=torch.long, device=dev)
    rows = dy[:, None] + torch.arange(h, device=dev)[None, :]  # (n, h) in padded coords
    cols = dx[:, None] + torch.arange(w, device=dev)[None, :]  # (n, w)
    if flip:
        do_flip = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(do_flip[:, None], cols.flip(1), cols)
    inside = None
    if pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    else:  # zero padding: clamp for the gather, then zero what fell outside
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    bidx = torch.arange(n, device=dev)[:, None, None]
    if layout == "NHWC":
        out = x[bidx, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
        if inside is not None:
            out = out * inside[..., None].to(out.dtype)
    else:
        out = x[bidx, :, rows[:, :, None], cols[:, None, :]]  # advanced dims first: (n, h, w, c)
        if inside is not None:
            out = out * inside[..., None].to(out.dtype)
        out = out.permute(0, 3, 1, 2)
    return out


def cutout(x: torch.Tensor, size: int, *, generator: torch.Generator | None = None,
           layout: str = "NHWC", fill: float = 0) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): a ``size`` x ``size`` square at a random centre (it may
    be clipped at the border) is set to ``fill``."""
    n, h, w = _split(x, layout)
    if n == 0 or size <= 0:
        return x
    dev = x.device
    cy = torch.randint(0, h, (n,), generator=generator, device=dev)
    cx = torch.randint(0, w, (n,), generator=generator, device=dev)
    ys = torch.arange(h, device=dev)[None, :]
    xs = torch.arange(w, device=dev)[None, :]
    in_y = (ys >= (cy - size // 2)[:, None]) & (ys < (cy - size // 2 + size)[:, None])
    in_x = (xs >= (cx - size // 2)[:, None]) & (xs < (cx - size // 2 + size)[:, None])
    mask = in_y[:, :, None] & in_x[:, None, :]  # (n, h, w)
    mask = mask[..., None] if layout == "NHWC" else mask[:, None]
    return x.masked_fill(mask, fill)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, *, generator: torch.Generator | None = None,
                  layout: str = "NHWC") -> torch.Tensor:
    """Apply ``cfg`` (crop + flip, then cutout) to a batch on its device."""
    x = crop_flip(x, pad=cfg.pad, pad_mode=cfg.pad_mode, flip=cfg.flip, crop=cfg.crop,
                  generator=generator, layout=layout)
    if cfg.cutout > 0:
        x = cutout(x, cfg.cutout, generator=generator, layout=layout)
    return x


def to_float(x_u8: torch.Tensor, *, layout: str = "NHWC", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 batch -> float in [0, 1], NCHW. From NHWC this is a permuted view, i.e. already
    in channels_last memory format (what convolutions like best on both CPU and GPU)."""
    if layout == "NHWC":
        x_u8 = x_u8.permute(0, 3, 1, 2)
    return x_u8.to(dtype).div_(255.0)
