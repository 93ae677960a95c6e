"""Evaluation: clean accuracy, per-class accuracy, attack success rate, robust accuracy.

Definitions (specs/defenses.md): CA = clean test accuracy; ASR = share of triggered
non-target test images that the model assigns to the target; RA = share of those triggered
images still given their true label.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
from torch import nn

from pipelines.dataset import ImageDataset
from pipelines.atomic import read_json
from pipelines.errors import VetsetError

from .loop import predict_logits

TriggerFn = Callable[[np.ndarray], np.ndarray]


def load_trigger(path: str | os.PathLike) -> dict:
    """Read a trigger.json spec ({"attack", "target", "params", "seed"})."""
    spec = read_json(path, f"trigger file not found: {path}")
    if not isinstance(spec, dict) or "attack" not in spec or "target" not in spec:
        raise VetsetError(f"{path}: a trigger spec needs 'attack' and 'target'")
    return spec


def resolve_trigger(trigger: dict | str | os.PathLike | TriggerFn, target: int | None = None
                    ) -> tuple[TriggerFn, int | None]:
    """A trigger as (images_u8 NHWC -> images_u8 NHWC, target). ``trigger`` is a spec dict
    (applied with ``pipelines.attacks.apply_trigger``), a path to trigger.json, or a
    callable (then ``target`` must be given, or None for an untargeted check)."""
    if isinstance(trigger, (str, os.PathLike)):
        trigger = load_trigger(trigger)
    if isinstance(trigger, dict):
        spec = trigger
        try:
            from pipelines.attacks import apply_trigger
        except ImportError as exc:
            raise VetsetError(f"cannot apply trigger spec: pipelines.attacks unavailable ({exc})") from None
        tgt = spec.get("target") if target is None else target
        return (lambda images: apply_trigger(images, spec)), (None if tgt is None else int(tgt))
    if callable(trigger):
        return trigger, target
    raise TypeError(f"trigger must be a spec dict, a path or a callable, not {type(trigger).__name__}")


def accuracy_report(pred: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    labels = np.asarray(labels)
    per_class = {}
    for k, name in enumerate(class_names):
        mask = labels == k
        per_class[name] = float((pred[mask] == k).mean()) if mask.any() else float("nan")
    return {"clean_acc": float((pred == labels).mean()) if len(labels) else float("nan"),
            "per_class_acc": per_class, "n_test": int(len(labels))}


def evaluate(model: nn.Module, test: ImageDataset, trigger: dict | str | os.PathLike | TriggerFn | None = None,
             *, target: int | None = None, batch_size: int = 1024, device: Any = None,
             tta_flip: bool = False) -> dict:
    """Clean accuracy and per-class accuracy on ``test``; with a trigger also ``asr``, ``ra``
    and ``n_backdoor`` (triggered non-target test rows; all rows when the target is None,
    then only ``ra`` is meaningful). Unreadable test rows are left out."""
    keep = ~test.unreadable if test.unreadable is not None else np.ones(len(test), bool)
    images, labels = test.images[keep], test.labels[keep]
    pred = predict_logits(model, images, batch_size, device=device, tta_flip=tta_flip).argmax(1)
    result = accuracy_report(pred, labels, test.class_names)
    if trigger is not None:
        apply, tgt = resolve_trigger(trigger, target)
        rows = labels != tgt if tgt is not None else np.ones(len(labels), bool)
        poisoned = np.asarray(apply(np.ascontiguousarray(images[rows])), dtype=np.uint8)
        if poisoned.shape != images[rows].shape:
            raise VetsetError(f"the trigger changed the image shape {images[rows].shape} -> {poisoned.shape}")
        bd_pred = predict_logits(model, poisoned, batch_size, device=device, tta_flip=tta_flip).argmax(1)
        n_bd = int(rows.sum())
        result.update({
            "target": tgt,
            "n_backdoor": n_bd,
            "asr": float((bd_pred == tgt).mean()) if (n_bd and tgt is not None) else float("nan"),
            "ra": float((bd_pred == labels[rows]).mean()) if n_bd else float("nan"),
        })
    return result


def epoch_monitor_for(test: ImageDataset, trigger: dict | str | os.PathLike | TriggerFn | None = None, *,
                      rows: int = 1000, batch_size: int = 1024) -> Callable[[nn.Module], dict]:
    """A per-epoch check for :func:`trainers.loop.epoch_monitor`: CA (and ASR with a trigger)
    of the network being trained on up to ``rows`` evenly spread readable test rows (the
    triggered copies are made once). The bare network, without an inference wrapper (PDB's
    defensive trigger is applied only at the end)."""
    keep = np.flatnonzero(~test.unreadable) if test.unreadable is not None else np.arange(len(test))
    if rows and len(keep) > rows:
        keep = keep[np.linspace(0, len(keep) - 1, rows).round().astype(int)]
    images, labels = test.images[keep], test.labels[keep]
    poisoned, tgt = None, None
    if trigger is not None:
        apply, tgt = resolve_trigger(trigger)
        if tgt is not None:
            rows_bd = labels != tgt
            poisoned = np.asarray(apply(np.ascontiguousarray(images[rows_bd])), dtype=np.uint8)

    def check(model: nn.Module) -> dict:
        pred = predict_logits(model, images, batch_size).argmax(1)
        out = {"clean_acc": float((pred == labels).mean()), "monitor_rows": int(len(labels))}
        if poisoned is not None and len(poisoned):
            out["asr"] = float((predict_logits(model, poisoned, batch_size).argmax(1) == tgt).mean())
        return out

    return check


def der(ca_defended: float, asr_defended: float, ca_undefended: float, asr_undefended: float) -> float:
    """Defense effectiveness rating: (max(0, dASR) - max(0, dCA) + 1) / 2 (BackdoorBench)."""
    return (max(0.0, asr_undefended - asr_defended) - max(0.0, ca_undefended - ca_defended) + 1) / 2
