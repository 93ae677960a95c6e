"""Fine-pruning (Liu et al., RAID 2018): prune the last convolutional layer's channels that
are least active on clean data until clean accuracy drops, then fine-tune.

The channels are the penultimate features (the last conv block's channels after global
average pooling), so a channel is pruned by zeroing its column of the linear head: the
pruned model has the same architecture and loads with ``load_model`` unchanged. The loop's
``after_step`` hook keeps those columns at zero during fine-tuning.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..loop import TrainHooks, fit
from ..models import head_module, penultimate_features
from .base import register
from .common import budget_epochs, check_steps, clean_arrays, eval_mode, fine_tune_config, schedule_info


@dataclass
class FPConfig:
    """specs/defenses.md: prune by increasing mean activation on clean data until clean
    accuracy drops by 10% (``acc_drop``, relative to the unpruned accuracy on the clean set),
    keeping the last pruning level inside that bound; then fine-tune (SGD lr 0.01, cosine,
    batch 128; ``epochs`` 10 chosen here). ``max_prune`` caps the pruned share. ``steps``:
    an optimizer-step budget for the fine-tuning that replaces ``epochs``."""

    acc_drop: float = 0.10
    max_prune: float = 0.95
    epochs: int = 10
    steps: int | None = None
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 5e-4

    def __post_init__(self) -> None:
        check_steps("steps", self.steps)


@torch.no_grad()
def clean_features(model, images: np.ndarray, device, batch: int = 512) -> torch.Tensor:
    out = []
    with eval_mode(model):
        model.to(device)
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).to(device).permute(0, 3, 1, 2).float() / 255
            out.append(penultimate_features(model, x).float().cpu())
    return torch.cat(out)


def pruning_curve(feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: np.ndarray,
                  order: torch.Tensor) -> np.ndarray:
    """Clean accuracy after pruning the first k channels of ``order``, k = 0..D."""
    y = torch.from_numpy(labels)
    logits = feats @ weight.T + (bias if bias is not None else 0)
    accs = [float((logits.argmax(1) == y).float().mean())]
    for j in order.tolist():
        logits = logits - feats[:, j:j + 1] * weight[:, j][None, :]
        accs.append(float((logits.argmax(1) == y).float().mean()))
    return np.asarray(accs)


@register("fp", FPConfig, "fine-pruning: prune dormant last-layer channels, then fine-tune")
def purify_fp(model, clean, cfg: FPConfig, *, device, seed, log):
    images, labels = clean_arrays(clean)
    head = head_module(model.net)
    feats = clean_features(model, images, device)
    order = torch.argsort(feats.mean(0))  # least active first
    w = head.weight.detach().float().cpu()
    b = head.bias.detach().float().cpu() if head.bias is not None else None
    accs = pruning_curve(feats, w, b, labels, order)
    floor = (1.0 - cfg.acc_drop) * accs[0]
    limit = int(cfg.max_prune * len(order))
    n_prune = 0
    for k in range(1, limit + 1):
        if accs[k] < floor:
            break
        n_prune = k
    pruned = order[:n_prune].to(head.weight.device)
    keep = torch.ones(head.weight.shape[1], dtype=head.weight.dtype, device=head.weight.device)
    keep[pruned] = 0

    def apply_mask(m) -> None:
        with torch.no_grad():
            head.weight.mul_(keep.to(head.weight.device)[None, :])

    apply_mask(model)
    if log:
        log(f"fp: pruned {n_prune}/{len(order)} channels (clean-set acc {accs[0]:.3f} -> {accs[n_prune]:.3f})")
    epochs = budget_epochs(cfg.epochs, cfg.steps, len(images), cfg.batch_size)
    tc = fine_tune_config(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, device=device, seed=seed,
                          weight_decay=cfg.weight_decay, n_rows=len(images))
    history: list = []
    if epochs > 0:
        result = fit(model, images, labels, tc, TrainHooks(after_step=apply_mask))
        model, history = result.model, result.history
    return model, {**schedule_info("", history, len(images), cfg.batch_size),
                   "n_pruned": int(n_prune), "n_channels": int(len(order)),
                   "clean_set_acc_before": float(accs[0]), "clean_set_acc_pruned": float(accs[n_prune]),
                   "pruned_channels": [int(c) for c in order[:n_prune].tolist()]}
