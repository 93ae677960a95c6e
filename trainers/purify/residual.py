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

After purification, when the input model showed evidence, the decision is the **transfer**
of the input model's reversed trigger: stamped on the clean rows of the other classes, does
the purified model still send at least ``transfer_threshold`` (20%) of them to its class?
A fresh reversal on the purified model does not decide, so it is skipped then
(``fresh_reversal_after`` runs it for the record, as ``reversal_evidence``): purification
makes a trigger harder to reverse before it removes it (on the CIFAR-10 residual net SAU / NPD / FT-SAM grew BadNets' reversed mask from 12 to
21-57 px while 16-43% ASR remained, and the fresh reversal said "none" for 11 of 12 purified
models), and after a real removal it still found small masks on digits (0.24-0.35 of the
median at ASR 0-0.7%). The transferred trigger tracked the true ASR (digits: 0.98 / 0.93,
0.79 / 0.76, 0.00 / 0.01; CIFAR-10 SAU on BadNets 0.73 / 0.43; docs/benchmarks.md). Not
independent after NC, which unlearns triggers reversed the same way: on a digits Blended
model NC left ASR 0.99 while the transferred trigger moved 0% of the rows.

When the input model showed no evidence, a small mask that the fresh reversal finds only on
the purified model is evidence, marked ``mask_only_after``: it is either the purified model's
fragility (a CIFAR-10 residual net trained without any poison read 0.79 of the median before,
0.33 after TSBD's CPU profile and 0.36 after auto's FT-SAM: false alarms) or a backdoor the input model
hid and purification strengthened (digits SIG, seed 0: ASR 0.24 and 0.71 before, 0.99 and 0.33
after SAU); docs/benchmarks.md, "Purifying a clean model". The summary's warning says both.

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
    # after purification: the input model's reversed trigger (when the input model showed
    # evidence) is applied to the clean rows of the other classes on the purified model;
    # evidence remains when at least this share of them still goes to its class: the same
    # 20% that the benchmarks call "still backdoored" for the true ASR
    transfer_threshold: float = 0.2
    # the fresh reversal on a purified model when the transferred trigger decides: it cannot
    # change the decision and costs as much as the estimate before (a third of `--method auto`'s
    # extra time on the CIFAR-10 residual net), so it is skipped unless asked for
    fresh_reversal_after: bool = False


def residual_estimate(model: nn.Module, clean: ImageDataset, cfg: ResidualConfig | None = None, *,
                      device="cpu", seed: int = 0, reference: dict | None = None) -> dict:
    """Reverse a trigger per class on ``cfg.rows`` clean rows of ``model`` (its weights are
    not changed) and say whether one class still looks like a backdoor's target.

    ``reference``: the estimate of the model before purification. When it showed evidence,
    its reversed trigger is also applied to this model (``transfer_rate``: the share of the
    other classes' clean rows it still sends to its class): purification can make a trigger
    harder to reverse before it removes it, and the trigger found on the input model still
    works where the backdoor remains."""
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
    names = list(clean.class_names)
    transfer = transfer_class = None
    if reference is not None and reference.get("_trigger") is not None:
        # the reference's smallest reversed mask, whether or not it was evidence (recorded;
        # it decides only when it was)
        transfer_class = int(reference["smallest_class"])
        transfer = transfer_rate(model, picked, reference["_trigger"], transfer_class, device)
    decides = transfer is not None and bool(reference.get("evidence"))
    common = {"transfer_rate": transfer, "transfer_class": transfer_class,
              "transfer_class_name": reference.get("smallest_class_name") if transfer_class is not None else None,
              "transfer_decides": decides, "transfer_threshold": cfg.transfer_threshold,
              "rows": int(len(images)), "steps_per_class": nc_cfg.reverse_epochs * per_pass,
              "threshold": cfg.threshold,
              "looks_for": "patch-like triggers (a small input mask that sends clean images to one class)"}
    if decides and not cfg.fresh_reversal_after:
        evidence = transfer >= cfg.transfer_threshold
        cls = transfer_class if evidence else None
        return {"evidence": bool(evidence), "class": cls,
                "class_name": (names[cls] if cls < len(names) else str(cls)) if cls is not None else None,
                "reversal_evidence": None, "fresh_reversal": False, "mask_only_after": False, **common,
                "_trigger": None, "smallest_to_median_l1": None, "smallest_class": None,
                "smallest_class_name": None, "smallest_mask_l1": None, "smallest_to_next_l1": None,
                "anomaly_index": None, "nc_published_call": None, "reversal_reached": None, "mask_l1": None,
                "seconds": time.time() - start}
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
    reversal = reached and ratio <= cfg.threshold
    only_after = False
    if decides:  # the input model's trigger decides (see the module docstring)
        evidence = transfer >= cfg.transfer_threshold
        cls = transfer_class if evidence else None
    else:
        # the fresh reversal decides; a small mask the input model did not show is marked, so
        # that the summary can say what else it may be (see the module docstring)
        only_after = reversal and reference is not None and not reference.get("evidence")
        evidence = reversal
        cls = k if reversal else None
    trigger = found["triggers"][k]
    return {"evidence": bool(evidence), "class": cls,
            "class_name": (names[cls] if cls < len(names) else str(cls)) if cls is not None else None,
            "reversal_evidence": bool(reversal), "fresh_reversal": True, "mask_only_after": bool(only_after),
            **common, "_trigger": (trigger["mask"].cpu(), trigger["pattern"].cpu()),
            "smallest_to_median_l1": ratio,
            "smallest_class": k, "smallest_class_name": names[k] if k < len(names) else str(k),
            "smallest_mask_l1": float(l1[k]), "smallest_to_next_l1": gap,
            "anomaly_index": float(found["anomaly_index"][k]), "nc_published_call": bool(found["backdoored"]),
            "reversal_reached": reached, "mask_l1": [float(v) for v in l1],
            "seconds": time.time() - start}


def transfer_rate(model: nn.Module, clean: ImageDataset, trigger: tuple, target: int, device="cpu") -> float | None:
    """The share of ``clean``'s rows not of ``target`` that ``model`` classifies as ``target``
    once the reversed ``trigger`` (mask, pattern) is stamped on them."""
    import torch

    from ..augment import to_float
    from ..loop import resolve_device

    rows = np.flatnonzero(clean.labels != target)
    if not len(rows):
        return None
    dev = resolve_device(device)
    mask, pattern = (t.to(dev) for t in trigger)
    was_training = model.training
    model.eval()
    hits = 0
    try:
        with torch.no_grad():
            for s in range(0, len(rows), 256):
                x = to_float(torch.from_numpy(np.ascontiguousarray(clean.images[rows[s:s + 256]])).to(dev))
                x = (1 - mask) * x + mask * pattern
                hits += int((model(x).argmax(1) == target).sum())
    finally:
        model.train(was_training)
    return hits / len(rows)


def public(est: dict | None) -> dict | None:
    """The estimate without its private parts (the reversed trigger's tensors)."""
    return None if est is None else {k: v for k, v in est.items() if not k.startswith("_")}


def describe(est: dict | None) -> str:
    """One phrase: 'class 0 (mask L1 3.1 px, 0.08 of the next smallest; anomaly index 4.1)'."""
    if not est:
        return "not measured"
    parts = []
    if est.get("smallest_mask_l1") is not None:  # a fresh reversal ran on this model
        parts.append(f"mask L1 {est['smallest_mask_l1']:.1f} px, {est['smallest_to_median_l1']:.2f} of the other "
                     f"classes' median; anomaly index {est['anomaly_index']:.1f}")
    if est.get("transfer_decides"):
        parts.append(f"the input model's reversed trigger sends {est['transfer_rate']:.0%} of the other classes' "
                     f"clean rows to class {est['transfer_class_name']}")
    detail = "; ".join(parts)
    if est["evidence"]:
        if est.get("mask_only_after"):
            detail += "; it appeared only after purification: the input model showed none"
        return f"class {est['class_name']} ({detail})"
    if est.get("smallest_class") is None:
        return f"none ({detail})"
    return f"none (smallest reversed mask: class {est.get('smallest_class_name', est['smallest_class'])}, {detail})"
