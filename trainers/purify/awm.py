"""AWM, adversarial weight masking (Chai & Chen, NeurIPS 2022), built for the few-shot
setting (as little as one clean image per class).

A min-max: per batch, the inner maximisation recovers a universal trigger (a mask M and a
pattern P, x' = (1 - M) x + M P, with ||M||_1 bounded) that makes the masked model
misclassify; the outer minimisation trains a soft mask m in [0, 1] on every conv / linear
weight (weights frozen) on alpha CE(x) + (1 - alpha) CE(x') + gamma ||m||_1. Masks are
``torch.nn.utils.parametrize`` parametrisations (w * m), so the loop trains them as ordinary
parameters; ``after_step`` clamps them into [0, 1]; at the end they are baked into the
weights (same architecture, nothing to record).
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
    """Chosen here after the paper's description (not its exact published values): ``steps``
    outer steps (``mask_optimizer`` Adam on the masks, lr 0.01, as the authors' code; batch
    128 or the whole few-shot set). A mask's gradient is its weight times the weight's
    gradient, so SGD at 0.01 moves only the masks of influential weights (mean mask 0.9997
    after 60 steps on the CIFAR-10 CPU slice: ASR 0.86, unchanged; Adam, 200 steps: 0.23).
    Per step ``inner_steps`` 5 Adam steps (lr 0.1) on the trigger, whose mask L1 is bounded by
    ``trigger_area`` x H x W; ``alpha`` 0.9 weighs clean CE against trigger CE; ``gamma``
    the mask L1 penalty (1e-7, per weight)."""

    steps: int = 400
    lr: float = 0.01
    mask_optimizer: str = "adam"
    batch_size: int = 128
    inner_steps: int = 5
    trigger_lr: float = 0.1
    trigger_area: float = 0.1
    alpha: float = 0.9
    gamma: float = 1e-7
    augment: bool = True

    def __post_init__(self) -> None:
        if self.mask_optimizer not in OPTIMIZERS:
            raise ValueError(f"mask_optimizer must be one of {OPTIMIZERS}, got {self.mask_optimizer!r}")


class WeightMask(nn.Module):
    def __init__(self, shape: torch.Size):
        super().__init__()
        self.mask = nn.Parameter(torch.ones(shape))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def _masked_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@register("awm", AWMConfig, "adversarial weight masking (few-shot)")
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
    gen = torch.Generator().manual_seed(seed)
    trig_mask = torch.rand((1, 1, h, w), generator=gen).mul_(0.1).to(device).requires_grad_(True)
    trig_pattern = torch.rand((1, 3, h, w), generator=gen).to(device).requires_grad_(True)
    trig_opt = torch.optim.Adam([trig_mask, trig_pattern], lr=cfg.trigger_lr)
    bound = cfg.trigger_area * h * w
    stats = {"inner_fooled": 0.0, "batches": 0}

    def stamp(x: torch.Tensor) -> torch.Tensor:
        mk = trig_mask.to(x.dtype)
        return (1 - mk) * x + mk * trig_pattern.to(x.dtype)

    def project_trigger() -> None:
        with torch.no_grad():
            trig_mask.clamp_(0, 1)
            trig_pattern.clamp_(0, 1)
            total = trig_mask.sum()
            if total > bound:
                trig_mask.mul_(bound / total)

    def extra_loss(m, x, y, logits, bidx):
        for _ in range(cfg.inner_steps):  # max over the trigger
            with eval_mode(m):
                out = logits_of(m, stamp(x.detach()))
            trig_opt.zero_grad(set_to_none=True)
            (-F.cross_entropy(out, y)).backward(inputs=[trig_mask, trig_pattern])
            trig_opt.step()
            project_trigger()
        x_trig = stamp(x).detach()
        out = logits_of(m, x_trig)
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
    return model, {**stats_masks, "trigger_mask_l1": float(trig_mask.detach().sum()),
                   "inner_fooled_rate": stats["inner_fooled"] / max(1, stats["batches"])}
