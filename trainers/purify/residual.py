"""A residual-backdoor estimate that needs no trigger: is there still a class that a tiny
input patch sends every clean image to?

Neural Cleanse's reversal (``nc.detect``) runs on a class-balanced handful of clean rows for
every class; a planted trigger shows up as one reversed mask far smaller than every other
class's. The published call (MAD anomaly index > 2 over the per-class mask norms) is
recorded, but the decision is the smallest mask against the median of the other classes'
masks (evidence at <= 0.4): with ten classes the MAD is computed from ten numbers and swings
(on digits it flagged 2 of 4 clean small CNNs and missed 2 of 4 backdoored ones). Measured:
backdoored digits models <= 0.14, a BadNets CIFAR-10 slice model 0.27; clean digits models
0.50-0.69, clean CIFAR-10 slice models 0.56-0.81 (docs/benchmarks.md). The smallest mask
against the next smallest is recorded too; on CIFAR-10 one other easy class put it at 0.43
for a backdoored model. It is run on the model before and after
purification (``purify_and_save``), so a user without the trigger reads "backdoor evidence
before: class 0 ...; after: none" in metrics.json and report.md, and a warning when the
evidence remains.

What it cannot see: triggers that no small mask reproduces (a blend over the whole image,
a warp) leave no small reversed mask; "none" then means "no patch-like backdoor found",
and the report says which kind of evidence was looked for.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch import nn

from pipelines.dataset import ImageDataset

from .nc import NCConfig, detect


@dataclass
class ResidualConfig:
    """``rows`` class-balanced clean rows, about ``steps_per_class`` Adam steps of
    ``batch_size`` rows per class (NC's lr 0.1, cost schedule and success threshold 0.99;
    the cost adapts once per pass over the rows); evidence when the smallest mask's reversal
    succeeded and its L1 is at most ``threshold`` of the median of the other classes' masks.
    300 steps: NC's
    reversal on digits needed 150 (with 12 no class reached the success threshold), on the
    6,000-row CIFAR-10 slice about 600 (benchmarks/purify.py)."""

    rows: int = 200
    steps_per_class: int = 300
    batch_size: int = 20
    reverse_lr: float = 0.1
    success_threshold: float = 0.99
    threshold: float = 0.4


def residual_estimate(model: nn.Module, clean: ImageDataset, cfg: ResidualConfig | None = None, *,
                      device="cpu", seed: int = 0) -> dict:
    """Reverse a trigger per class on ``cfg.rows`` clean rows of ``model`` (its weights are
    not changed) and say whether one class still looks like a backdoor's target."""
    from ..loop import resolve_device

    cfg = cfg or ResidualConfig()
    device = resolve_device(device)
    start = time.time()
    from .run import balanced_subset

    picked = balanced_subset(clean, cfg.rows, seed)  # the clean rows, class by class in turn
    images = picked.images
    batch = max(2, min(cfg.batch_size, len(images)))
    per_pass = -(-len(images) // batch)
    nc_cfg = NCConfig(reverse_epochs=max(1, round(cfg.steps_per_class / per_pass)), reverse_rows=len(images),
                      reverse_batch_size=batch, reverse_lr=cfg.reverse_lr,
                      success_threshold=cfg.success_threshold)
    was_training = model.training
    model.eval()
    try:
        found = detect(model, images, clean.num_classes, nc_cfg, device, seed)
    finally:
        model.train(was_training)
    l1 = np.asarray(found["mask_l1"])
    k = int(np.argmin(l1))
    reached = bool(found["reverse_reached"][k])
    gap = float(found["smallest_to_next_l1"])
    ratio = float(found["smallest_to_median_l1"])
    evidence = reached and ratio <= cfg.threshold
    names = list(clean.class_names)
    return {"evidence": bool(evidence), "class": k if evidence else None,
            "class_name": (names[k] if k < len(names) else str(k)) if evidence else None,
            "smallest_to_median_l1": ratio,
            "smallest_class": k, "smallest_class_name": names[k] if k < len(names) else str(k),
            "smallest_mask_l1": float(l1[k]), "smallest_to_next_l1": gap,
            "anomaly_index": float(found["anomaly_index"][k]), "nc_published_call": bool(found["backdoored"]),
            "reversal_reached": reached, "mask_l1": [float(v) for v in l1],
            "rows": int(len(images)), "steps_per_class": nc_cfg.reverse_epochs * per_pass,
            "threshold": cfg.threshold, "seconds": time.time() - start,
            "looks_for": "patch-like triggers (a small input mask that sends clean images to one class)"}


def describe(est: dict | None) -> str:
    """One phrase: 'class 0 (mask L1 3.1 px, 0.08 of the next smallest; anomaly index 4.1)'."""
    if not est:
        return "not measured"
    detail = (f"mask L1 {est['smallest_mask_l1']:.1f} px, {est['smallest_to_median_l1']:.2f} of the other classes' "
              f"median; "
              f"anomaly index {est['anomaly_index']:.1f}")
    if est["evidence"]:
        return f"class {est['class_name']} ({detail})"
    return f"none (smallest reversed mask: class {est.get('smallest_class_name', est['smallest_class'])}, {detail})"
