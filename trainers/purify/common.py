"""What the purification methods share: the clean arrays, a TrainConfig for fine-tuning,
frozen copies, BatchNorm freezing, PGD on inputs and the second-gradient-pass hooks (ASAM,
gradient-norm penalty) for :class:`trainers.loop.TrainHooks.after_backward`."""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError

from ..accel import autocast_for
from ..augment import AugmentConfig
from ..loop import TrainConfig, _batches, predict_logits

Log = Callable[[str], Any] | None


# the value of a method's ``target`` option (NPD's and SAU's CPU profiles) that asks for the
# backdoor's class as estimated before the run: the class an audit of the training data named,
# else the one the residual estimate of the input model names (trainers/purify/run.py's
# ``resolve_estimated_target`` resolves it), else None (the method's own per-row choice)
ESTIMATE = "estimate"


def is_estimate(target: int | str | None) -> bool:
    """Whether a method's ``target`` asks for the estimated class (resolved before the run)."""
    return isinstance(target, str) and target.strip().lower() == ESTIMATE


def attack_target(target: int | str | None, class_names, method: str) -> int | None:
    """A method's ``target`` option as a class index (None stays None, and so does an
    unresolved "estimate": no estimate was given); a one-line error naming ``method`` when it
    names no class of the clean set."""
    if target is None or is_estimate(target) or str(target).strip().lower() in ("", "none"):
        return None
    names = [str(c) for c in class_names]
    if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
        if target not in names:
            raise VetsetError(f"{method}: target {target!r} is not a class of the clean set ({', '.join(names)})")
        return names.index(target)
    index = int(target)
    if not 0 <= index < len(names):
        raise VetsetError(f"{method}: target {index} is not a class index (0-{len(names) - 1})")
    return index


def clean_arrays(clean: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """Readable rows of the clean set as (uint8 NHWC images, int64 labels)."""
    keep = ~clean.unreadable
    images, labels = clean.images[keep], clean.labels[keep]
    if len(images) == 0:
        raise VetsetError("the clean set has no readable rows")
    return images, labels


def fine_tune_config(*, epochs: int, batch_size: int, lr: float, device: Any, seed: int,
                     optimizer: str = "sgd", schedule: str = "cosine", weight_decay: float = 5e-4,
                     momentum: float = 0.9, label_smoothing: float = 0.0, augment: bool = True,
                     n_rows: int | None = None) -> TrainConfig:
    """BackdoorBench-style fine-tuning: SGD momentum 0.9, wd 5e-4, cosine, crop + flip.
    The batch is capped at the clean set's size (few-shot sets)."""
    if n_rows is not None:
        batch_size = max(2, min(int(batch_size), int(n_rows)))
    return TrainConfig(epochs=int(epochs), batch_size=int(batch_size), lr=float(lr), momentum=momentum,
                       weight_decay=weight_decay, nesterov=False, optimizer=optimizer, schedule=schedule,
                       label_smoothing=label_smoothing,
                       augment=AugmentConfig() if augment else AugmentConfig(crop=False, flip=False),
                       device=str(device), seed=int(seed))


def epochs_for_steps(steps: int, n_rows: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps on ``n_rows`` rows."""
    per_epoch = max(1, len(_batches(int(n_rows), int(batch_size))))
    return max(1, math.ceil(int(steps) / per_epoch))


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of the loop over ``n_rows`` rows (the batch capped at
    ``n_rows`` as :func:`fine_tune_config` does)."""
    batch = max(2, min(int(batch_size), int(n_rows)))
    return max(1, len(_batches(int(n_rows), batch)))


def check_steps(name: str, steps: int | None) -> None:
    """A step budget is None (count epochs) or an integer >= 0 (ValueError otherwise: the
    config's one-line error)."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"{name} must be a whole number >= 0 (or None: count epochs), got {steps!r}")


def budget_epochs(epochs: int, steps: int | None, n_rows: int, batch_size: int) -> int:
    """The epochs to run: ``epochs`` when ``steps`` is None, else the fewest whole epochs
    that give at least ``steps`` optimizer steps on ``n_rows`` rows (0 for 0 steps). Over a
    500-row clean set an epoch of batch 128 is 4 steps, so a published epoch count means far
    fewer updates there than on the published 2,500 rows: ``steps`` says what is meant."""
    if steps is None:
        return int(epochs)
    return math.ceil(int(steps) / steps_per_epoch(n_rows, batch_size))


def schedule_info(prefix: str, history: list, n_rows: int, batch_size: int) -> dict:
    """What a fit actually ran: ``{prefix}optimizer_steps`` and ``{prefix}epochs_run`` (an
    early stop included), for the method's info / metrics (names that no method's other info
    and ``--method auto``'s ``steps`` list collide with)."""
    epochs = len(history)
    return {f"{prefix}epochs_run": epochs, f"{prefix}optimizer_steps": epochs * steps_per_epoch(n_rows, batch_size)}


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no trainable parameters (SAU's reference model)."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics frozen); call after model.train()."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put every module in eval mode, restoring each module's flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm layers keep normalising with the batch's statistics (train mode) but do not
    update their running statistics (momentum 0): for a second forward pass on the same
    batch at perturbed weights (SAM, the gradient-norm penalty), whose statistics must not
    leak into the model used at inference."""
    saved = [(m, m.momentum) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _ in saved:
        m.momentum = 0.0
    try:
        yield model
    finally:
        for m, momentum in saved:
            m.momentum = momentum


@contextmanager
def requires_grad_only(model: nn.Module, params: list[nn.Parameter]) -> Iterator[None]:
    """Train only ``params``; restore every parameter's requires_grad afterwards."""
    before = [(p, p.requires_grad) for p in model.parameters()]
    keep = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    try:
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's float32 logits, under bf16 autocast on CUDA (or where forced, see
    :mod:`trainers.accel`); the extra passes of a purifier (PGD, a frozen reference) run eager:
    only the loop's main forward is compiled."""
    with autocast_for(x):
        return model(x).float()


def clean_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: Any = None) -> float:
    pred = predict_logits(model, images, 512, device=device).argmax(1)
    return float((pred == labels).mean()) if len(labels) else float("nan")


def _with_grad(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad and p.grad is not None]


def asam_hook(rho: float, eta: float = 0.0) -> Callable[[nn.Module, Callable[[], torch.Tensor]], None]:
    """Adaptive SAM as an ``after_backward`` hook: with T_w = |w| + eta,
    eps = rho T_w^2 g / ||T_w g||; the gradient taken at w + eps replaces g. ``eta`` 0 is
    FT-SAM's form (specs/defenses.md: eps = rho w^2 g / || |w| g ||, rho 2.0); Kwon et al.
    2021 add eta 0.01. The second pass does not update BatchNorm's running statistics."""

    def hook(model: nn.Module, recompute: Callable[[], torch.Tensor]) -> None:
        params = _with_grad(model)
        if not params:
            return
        with torch.no_grad():
            tw = [p.abs() + eta for p in params]
            scaled = [t * p.grad for t, p in zip(tw, params)]
            norm = torch.norm(torch.stack([s.norm() for s in scaled])).clamp_min(1e-12)
            eps = [rho * t * s / norm for t, s in zip(tw, scaled)]
            for p, e in zip(params, eps):
                p.add_(e)
                p.grad = None
        with running_stats_frozen(model):
            recompute().backward()
        with torch.no_grad():
            for p, e in zip(params, eps):
                p.sub_(e)
                if p.grad is None:
                    p.grad = torch.zeros_like(p)

    return hook


def gradient_norm_hook(r: float, alpha: float) -> Callable[[nn.Module, Callable[[], torch.Tensor]], None]:
    """TSBD's gradient-norm penalty as an ``after_backward`` hook: g1 at w, g2 at
    w + r g1 / ||g1||; the update uses (1 - alpha) g1 + alpha g2. The second pass does not
    update BatchNorm's running statistics."""

    def hook(model: nn.Module, recompute: Callable[[], torch.Tensor]) -> None:
        params = _with_grad(model)
        if not params:
            return
        with torch.no_grad():
            g1 = [p.grad.detach().clone() for p in params]
            norm = torch.norm(torch.stack([g.norm() for g in g1])).clamp_min(1e-12)
            eps = [r * g / norm for g in g1]
            for p, e in zip(params, eps):
                p.add_(e)
                p.grad = None
        with running_stats_frozen(model):
            recompute().backward()
        with torch.no_grad():
            for p, e, g in zip(params, eps, g1):
                p.sub_(e)
                g2 = p.grad if p.grad is not None else torch.zeros_like(p)
                p.grad = (1 - alpha) * g + alpha * g2

    return hook


def entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)
