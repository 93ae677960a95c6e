"""STRIP (Gao et al., ACSAC 2019) at inference time, saved with the model.

The wrapper superimposes each input on a fixed bank of clean images and averages the prediction entropy over the bank: a triggered input keeps predicting the
target whatever it is blended with, so its entropy is low. Inputs whose mean entropy falls
below ``threshold`` are rejected.

Superimposition (``blend``): ``"add"`` (the default) is the authors' ``cv2.addWeighted(x, 1,
b_i, 1, 0)``, x_i = clip(x + b_i, 0, 1): a saturated patch trigger (BadNets' white square)
stays intact whatever it is blended with. ``"mix"`` is the linear x_i = (1 - a) x + a b_i,
which halves a patch's contrast: on BadNets digits it let every triggered input through
(false acceptance 1.0 at alpha 0.5), so it is kept only as an option. The threshold is the ``frr`` (1%) quantile of the entropy
of held-out clean images (clean rows not in the bank).

Contract (``load_model`` returns this module when config.json names the ``strip`` wrapper):

* ``model(x)`` -> logits of the inner model (float [0, 1] NCHW in), as for any vetset model;
* ``model.predict_with_reject(x)`` -> ``(logits, reject)``, ``reject`` a bool tensor (N,);
* ``model.entropy(x)`` -> the mean blended entropy (N,).

The bank and the threshold are buffers in model.safetensors; no pickle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..saved import WRAPPERS
from .base import register
from .common import clean_arrays, entropy, logits_of


class StripWrapper(nn.Module):
    wrapper_name = "strip"

    def __init__(self, inner: nn.Module, n_bank: int, image_size, alpha: float = 0.5, threshold: float = 0.0,
                 batch_size: int = 256, blend: str = "mix"):
        super().__init__()
        if blend not in ("add", "mix"):
            raise ValueError(f"STRIP blend must be 'add' or 'mix', got {blend!r}")
        self.inner = inner
        self.alpha = float(alpha)
        self.blend = blend
        self.batch_size = int(batch_size)
        h, w = int(image_size[0]), int(image_size[1])
        self.register_buffer("bank", torch.zeros(int(n_bank), 3, h, w))
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    @torch.no_grad()
    def entropy(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        bank = self.bank.to(x.device, x.dtype)
        for s in range(0, len(x), max(1, self.batch_size // max(1, len(bank)))):
            xb = x[s:s + max(1, self.batch_size // max(1, len(bank)))]
            if self.blend == "add":
                blended = (xb[:, None] + bank[None]).clamp(0, 1).flatten(0, 1)
            else:
                blended = ((1 - self.alpha) * xb[:, None] + self.alpha * bank[None]).flatten(0, 1)
            ent = entropy(logits_of(self.inner, blended)).view(len(xb), len(bank)).mean(1)
            out.append(ent)
        return torch.cat(out) if out else torch.zeros(0, device=x.device)

    @torch.no_grad()
    def predict_with_reject(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner(x), self.entropy(x) < self.threshold.to(x.device)


@WRAPPERS.register("strip")
def _strip(inner: nn.Module, n_bank: int, image_size, alpha: float = 0.5, threshold: float = 0.0,
           batch_size: int = 256, blend: str = "mix") -> nn.Module:
    # "mix" when a saved config names no blend (saved before "add" existed)
    return StripWrapper(inner, n_bank, image_size, alpha=alpha, threshold=threshold, batch_size=batch_size,
                        blend=blend)


@dataclass
class StripConfig:
    """``n_bank`` clean images to blend with (STRIP's authors used N = 100 blends; 32 here,
    chosen for speed), ``blend`` "add" (the authors' saturating superimposition; "mix" =
    linear with weight ``alpha`` 0.5), false rejection rate ``frr`` 1% on the
    clean rows that are not in the bank (at most ``calib_rows``)."""

    n_bank: int = 32
    blend: str = "add"
    alpha: float = 0.5
    frr: float = 0.01
    calib_rows: int = 2000
    batch_size: int = 512


def to_nchw(images: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255


@register("strip", StripConfig, "STRIP: reject low-entropy inputs at inference (wrapper saved with the model)")
def purify_strip(model, clean, cfg: StripConfig, *, device, seed, log):
    images, labels = clean_arrays(clean)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_bank = max(1, min(cfg.n_bank, len(images) // 2))
    bank_rows, calib_rows = order[:n_bank], order[n_bank:n_bank + cfg.calib_rows]
    if len(calib_rows) == 0:
        calib_rows = bank_rows
    model.to(device).eval()
    wrapped = StripWrapper(model, n_bank, images.shape[1:3], alpha=cfg.alpha, batch_size=cfg.batch_size,
                           blend=cfg.blend).to(device)
    wrapped.bank.copy_(to_nchw(images[bank_rows], device))
    ent = wrapped.entropy(to_nchw(images[calib_rows], device)).float().cpu().numpy()
    threshold = float(np.quantile(ent, cfg.frr))
    wrapped.threshold.fill_(threshold)
    calib_frr = float((ent < threshold).mean())
    spec = {"name": "strip", "params": {"n_bank": int(n_bank), "image_size": [int(v) for v in images.shape[1:3]],
                                        "alpha": cfg.alpha, "threshold": threshold, "batch_size": cfg.batch_size,
                                        "blend": cfg.blend}}
    return wrapped.eval(), {"wrapper": spec, "threshold": threshold, "calibration_rows": int(len(calib_rows)),
                            "calibration_frr": calib_frr}
