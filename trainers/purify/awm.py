"""AWM, adversarial weight masking (Chai & Chen, NeurIPS 2022), built for the few-shot
setting (as little as one clean image per class).

A min-max: the inner maximisation finds a universal additive perturbation delta (one for
all images, ||delta||_1 bounded) that moves the masked model off its own predictions; the
outer minimisation trains a soft mask m in [0, 1] on every conv / linear weight (weights
frozen) on alpha CE(x) + (1 - alpha) CE(clamp(x + delta)) + gamma ||m||_1. Masks are
``torch.nn.utils.parametrize`` parametrisations (w * m), so the loop trains them as ordinary
parameters; ``after_step`` clamps them into [0, 1]; at the end they are baked into the
weights (same architecture, nothing to record).

The perturbation follows the authors' code (github.com/jinghuichen/AWM, ``mask_train``):
additive, SGD at lr 10 on -CE against the model's own predictions, then scaled down to the
L1 budget. An earlier version here reversed a trigger as Neural Cleanse does (a mask and a
pattern, the mask's area bounded by 10% of the image): nothing pulled that mask below its
bound, so on a 3x3 BadNets trigger it always "recovered" a 102-pixel region.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..loop import OPTIMIZERS, TrainHooks, fit
from .base import register
from .common import clean_arrays, epochs_for_steps, eval_mode, fine_tune_config, freeze_batchnorm, logits_of


@dataclass
class AWMConfig:
    """``steps`` outer steps (``mask_optimizer`` Adam on the masks, lr 0.01, as the authors'
    code; batch 128 or the whole few-shot set). A mask's gradient is its weight times the
    weight's gradient, so SGD at 0.01 moves only the masks of influential weights (mean mask
    0.9997 after 60 steps on the CIFAR-10 CPU slice: ASR 0.86, unchanged). Per outer step
    ``inner_steps`` SGD steps (``trigger_lr`` 10, the authors') on the shared perturbation,
    which is then scaled to L1 <= ``trigger_norm`` and kept from step to step (the authors
    restart it from zero each outer epoch); ``alpha`` 0.9 weighs clean CE against perturbed
    CE; ``gamma`` the mask L1 penalty (1e-7, per weight; the authors' 1e-8).

    ``trigger_norm`` 300 (pixel values in [0, 1]; about 0.1 a value on a 32x32 RGB image),
    between the authors' 1,000 (their default) and 100 (their GTSRB example), measured
    (docs/benchmarks.md, one thread): CIFAR-10 small CNN, 500 clean rows, 200 steps:
    BadNets ASR 92% -> 64 / 6.3 / 7.7% at 100 / 300 / 1,000 (CA +1 / -0.5 / -3 points),
    Blended -> 18 / 4.0% at 300 / 1,000 (CA -13 / -15); digits (3 model seeds, 48 steps):
    ASR 0.85-0.96 -> 0.05-0.14 at 100 (CA -1 to -4), 0.01-0.08 at 300 (CA -3 to -14), 0.00 at
    1,000 (CA -20, one seed)."""

    steps: int = 400
    lr: float = 0.01
    mask_optimizer: str = "adam"
    batch_size: int = 128
    inner_steps: int = 5
    trigger_lr: float = 10.0
    trigger_norm: float = 300.0
    alpha: float = 0.9
    gamma: float = 1e-7
    augment: bool = True

    def __post_init__(self) -> None:
        if self.mask_optimizer not in OPTIMIZERS:
            raise ValueError(f"mask_optimizer must be one of {OPTIMIZERS}, got {self.mask_optimizer!r}")
        if self.trigger_norm <= 0:
            raise ValueError(f"trigger_norm must be > 0, got {self.trigger_norm}")


class WeightMask(nn.Module):
    def __init__(self, shape: torch.Size):
        super().__init__()
        self.mask = nn.Parameter(torch.ones(shape))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _masked_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


# CPU: 200 steps (the published 400 take ~5 min on 300 rows)
@register("awm", AWMConfig, "adversarial weight masking (few-shot)", cpu={"steps": 200})
def purify_awm(model, clean, cfg: AWMConfig, *, device, seed, log):
    images, labels = clean_arrays(clean)
    model.to(device)
    modules = _masked_modules(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    masks = []
    for m in modules:
        parametrize.register_parametrization(m, "weight", WeightMask(m.weight.shape))
        masks.append(m.parametrizations.weight[0].mask)
    h, w = images.shape[1:3]
    delta = torch.zeros((1, 3, h, w), device=device, requires_grad=True)
    delta_opt = torch.optim.SGD([delta], lr=cfg.trigger_lr)
    stats = {"inner_fooled": 0.0, "batches": 0}

    def project() -> None:  # scale down to the L1 budget, on the device (no sync with a GPU)
        with torch.no_grad():
            delta.mul_((cfg.trigger_norm / delta.abs().sum().clamp_min(1e-12)).clamp(max=1.0))

    def extra_loss(m, x, y, logits, bidx):
        x = x.detach()
        with torch.no_grad(), eval_mode(m):
            own = logits_of(m, x).argmax(1)  # the model's own predictions, as the authors' code
        for _ in range(cfg.inner_steps):  # max over the perturbation
            with eval_mode(m):
                out = logits_of(m, x + delta.to(x.dtype))
            delta_opt.zero_grad(set_to_none=True)
            (-F.cross_entropy(out, own)).backward(inputs=[delta])
            delta_opt.step()
        project()
        out = logits_of(m, (x + delta.detach().to(x.dtype)).clamp(0, 1))
        with torch.no_grad():
            stats["inner_fooled"] += float((out.argmax(1) != y).float().mean())
            stats["batches"] += 1
        l1 = sum(mk.abs().sum() for mk in masks)
        return (1 - cfg.alpha) * F.cross_entropy(out, y) + cfg.gamma * l1

    def clamp_masks(m) -> None:
        with torch.no_grad():
            for mk in masks:
                mk.clamp_(0, 1)

    bs = max(2, min(cfg.batch_size, len(images)))
    tc = fine_tune_config(epochs=epochs_for_steps(cfg.steps, len(images), bs), batch_size=bs, lr=cfg.lr,
                          device=device, seed=seed, optimizer=cfg.mask_optimizer, weight_decay=0.0,
                          augment=cfg.augment, n_rows=len(images))
    hooks = TrainHooks(loss_fn=lambda per, logits, y, bidx: cfg.alpha * per.mean(), extra_loss=extra_loss,
                       after_step=clamp_masks, on_epoch_start=lambda e, m: freeze_batchnorm(m))
    try:
        model = fit(model, images, labels, tc, hooks).model
        with torch.no_grad():
            mask_values = torch.cat([mk.detach().flatten() for mk in masks])
            stats_masks = {"mean_mask": float(mask_values.mean()),
                           "share_below_half": float((mask_values < 0.5).float().mean())}
    finally:
        for m in modules:
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m in modules:
            m.weight.requires_grad_(True)
    return model, {**stats_masks, "perturbation_l1": float(delta.detach().abs().sum()),
                   "inner_fooled_rate": stats["inner_fooled"] / max(1, stats["batches"])}
