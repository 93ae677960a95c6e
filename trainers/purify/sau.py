"""SAU, shared adversarial unlearning (Wei et al., NeurIPS 2023).

Per batch, a PGD attack (loop hook ``extra_loss``) looks for perturbations that fool the
frozen backdoored reference and that the model being purified shares, i.e. classifies as
the reference's wrong prediction; the update minimises CE on the clean rows plus
L_shared = -mean log(1 - p_model(ref's prediction on x+delta | x+delta)) over the rows where
the reference is fooled. BatchNorm statistics stay frozen (hook ``on_epoch_start``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..loop import TrainHooks, fit
from .base import register
from .common import clean_arrays, eval_mode, fine_tune_config, freeze_batchnorm, frozen_copy, logits_of, pgd


@dataclass
class SAUConfig:
    """specs/defenses.md: L-inf eps 0.2 in [0, 1] space, step 0.2, 5 PGD steps; Adam lr
    1e-4, cosine, 100 rounds (epochs), batch 256; BN frozen. ``shared_weight`` scales
    L_shared (1.0). ``augment`` False: the authors' code (BackdoorBench's SAU) feeds the
    clean set without crop or flip (on the CPU benchmark crop + flip cost 12 points of CA)."""

    epochs: int = 100
    lr: float = 1e-4
    batch_size: int = 256
    eps: float = 0.2
    step: float = 0.2
    pgd_steps: int = 5
    shared_weight: float = 1.0
    augment: bool = False


def shared_loss(model_logits: torch.Tensor, ref_pred: torch.Tensor, fooled: torch.Tensor) -> torch.Tensor:
    """-mean over fooled rows of log(1 - p_model(ref_pred)); 0 when no row is fooled."""
    p = F.softmax(model_logits, dim=1).gather(1, ref_pred[:, None]).squeeze(1)
    term = -torch.log((1 - p).clamp_min(1e-6))
    return (term * fooled).sum() / fooled.sum().clamp_min(1)


@register("sau", SAUConfig, "shared adversarial unlearning")
def purify_sau(model, clean, cfg: SAUConfig, *, device, seed, log):
    images, labels = clean_arrays(clean)
    ref = frozen_copy(model).to(device)
    stats = {"fooled": 0, "rows": 0}

    def extra_loss(m, x, y, logits, bidx):
        def objective(x_adv):
            with eval_mode(m):
                out = logits_of(m, x_adv)
            ref_out = logits_of(ref, x_adv)
            ref_pred = ref_out.argmax(1)
            fooled = (ref_pred != y).float()
            return F.cross_entropy(ref_out, y) + shared_loss(out, ref_pred, fooled)

        x_adv = pgd(objective, x, eps=cfg.eps, step=cfg.step, steps=cfg.pgd_steps, norm="linf")
        with torch.no_grad():
            ref_pred = logits_of(ref, x_adv).argmax(1)
            fooled = (ref_pred != y).float()
        stats["fooled"] += int(fooled.sum())
        stats["rows"] += len(y)
        return cfg.shared_weight * shared_loss(logits_of(m, x_adv), ref_pred, fooled)

    tc = fine_tune_config(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, device=device, seed=seed,
                          optimizer="adam", weight_decay=0.0, augment=cfg.augment, n_rows=len(images))
    hooks = TrainHooks(on_epoch_start=lambda e, m: freeze_batchnorm(m), extra_loss=extra_loss)
    model = fit(model, images, labels, tc, hooks).model
    return model, {"shared_adv_fooled_ref_rate": stats["fooled"] / max(1, stats["rows"])}
