"""Confident learning (Northcutt, Jiang & Chuang, JAIR 2021) for wrong labels, implemented
directly (no cleanlab dependency) on k-fold out-of-sample predicted probabilities.

- per-class threshold t_j = mean self-confidence p_j(x) over rows labelled j;
- a row's confident label is the class j with p_j(x) >= t_j of largest probability (rows with
  no such class are not counted);
- ``filter_by="prune_by_noise_rate"`` (the default, as in cleanlab's ``find_label_issues``):
  per off-diagonal cell (i given, j true) of the confident joint calibrated to the row
  count, flag that many rows of class i with the largest margin p_j - p_i;
  ``"confident_learning"``: a row is a label issue when its confident label differs from its
  given label (the off-diagonal of the confident joint). It misses wrong-label rows whose
  true class the model finds likely but below that class's threshold: on digits with 10%
  symmetric noise (3 folds x 4 epochs) noisy TPR 0.75 / FPR 0% against 0.90 / 0.6% for the
  default (F1 0.857 vs 0.921; two seeds alike), on the demo 0.589 vs 0.733
  (docs/benchmarks.md, "Detectors");
- score (higher = dirtier) = 1 - self-confidence p_given(x) (cleanlab's
  ``label_quality`` "self_confidence", inverted); suggested label = the confident label
  for flagged rows (cleanlab's ``predicted_label`` column), -1 otherwise.

Reliability gate (ours): a row the model gets wrong is a wrong label only if the model is
usually right, so when the out-of-sample accuracy against the given labels is below
``min_accuracy`` (0.7) the detector keeps its scores and suggested labels but flags nothing,
and says so (``info["withheld"]``). Why: on a 6,000-row CIFAR-10 slice the CPU fold models
reach 0.61 accuracy, and confident learning flagged 20% of the clean rows (docs/benchmarks.md,
"Detectors"): a weak model cannot tell a wrong label from a hard image. With 10% symmetric
noise a model that is 88% right on clean images still scores ~0.8 against the given labels,
so the gate stays open there; heavier noise with a weak model closes it (lower
``min_accuracy`` to see the flags anyway).

``folds`` 5 is cleanlab's ``cv_n_folds`` default. The fold models are cheaper than the shared
detection model by default (``epochs`` = the preset's, halved, at least 4): label noise is
found from what a model learns early, before it memorises the wrong labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.dataset import ImageDataset

from .base import DETECTORS, AuditContext, Detector, DetectorResult
from .detection_model import ModelSpec, out_of_sample_probs, resolve_device

FILTERS = ("confident_learning", "prune_by_noise_rate")


@dataclass
class ConfidentConfig:
    folds: int = 5
    filter_by: str = "prune_by_noise_rate"
    arch: str = "auto"
    epochs: int | None = None  # None: half the preset's epochs, at least 4
    min_accuracy: float = 0.7  # out-of-sample accuracy below which flags are withheld (ours)


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    t = np.full(k, np.inf)
    for j in range(k):
        rows = labels == j
        if rows.any():
            t[j] = probs[rows, j].mean()
    return t


def confident_labels(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The confident label of each row, -1 where no class reaches its threshold."""
    t = per_class_thresholds(probs, labels)
    above = probs >= t[None, :]
    masked = np.where(above, probs, -np.inf)
    out = masked.argmax(1)
    return np.where(above.any(1), out, -1)


def find_label_issues(probs: np.ndarray, labels: np.ndarray, filter_by: str = "prune_by_noise_rate") -> tuple[np.ndarray, np.ndarray]:
    """(is_label_issue, suggested/confident label) per row."""
    if filter_by not in FILTERS:
        raise ValueError(f"filter_by must be one of {FILTERS}, got {filter_by!r}")
    conf = confident_labels(probs, labels)
    off = (conf >= 0) & (conf != labels)
    if filter_by == "confident_learning":
        return off, conf
    k = probs.shape[1]
    joint = np.zeros((k, k))
    np.add.at(joint, (labels[conf >= 0], conf[conf >= 0]), 1)
    counts = np.bincount(labels, minlength=k).astype(float)
    row_sums = joint.sum(1, keepdims=True)
    calibrated = np.where(row_sums > 0, joint / np.maximum(row_sums, 1) * counts[:, None], 0.0)
    issues = np.zeros(len(labels), dtype=bool)
    for i in range(k):
        rows = np.flatnonzero(labels == i)
        for j in range(k):
            if i == j:
                continue
            n = int(round(calibrated[i, j]))
            if n <= 0:
                continue
            margin = probs[rows, j] - probs[rows, i]
            issues[rows[np.argsort(-margin, kind="stable")[:n]]] = True
    best_other = np.where(np.eye(k, dtype=bool)[labels], -np.inf, probs).argmax(1)
    return issues, np.where(conf >= 0, conf, best_other)


@DETECTORS.register("confident")
class ConfidentLearning(Detector):
    name = "confident"
    Config = ConfidentConfig

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg: ConfidentConfig = self.config
        spec = ModelSpec.from_options(cfg.arch, cfg.epochs)
        if cfg.epochs is None:
            resolved = spec.resolve(resolve_device(ctx.device))
            base = resolved.train_config(resolve_device(ctx.device), ctx.seed).epochs
            spec = ModelSpec.from_options(cfg.arch, max(4, base // 2))
        oof = out_of_sample_probs(data, ctx, spec, cfg.folds)
        issues, conf = find_label_issues(oof.probs, data.labels, cfg.filter_by)
        self_conf = oof.probs[np.arange(len(data)), data.labels]
        suggested = np.where(issues & (conf >= 0), conf, -1)
        accuracy = float((oof.probs.argmax(1) == data.labels).mean()) if len(data) else float("nan")
        withheld = bool(len(data) and accuracy < cfg.min_accuracy)
        found = int(issues.sum())
        if withheld:
            issues = np.zeros_like(issues)
        return DetectorResult(self.name, 1.0 - self_conf, issues, suggested, {
            "withheld": withheld, "issues_found": found, "min_accuracy": cfg.min_accuracy,
            "finding": (f"{found} label issues found but withheld: out-of-sample accuracy {accuracy:.3f} < "
                        f"{cfg.min_accuracy} (too weak to tell a wrong label from a hard image)" if withheld else
                        f"{found} label issues (out-of-sample accuracy {accuracy:.3f})"),
            "folds": cfg.folds, "filter_by": cfg.filter_by, "oof_seconds": round(oof.seconds, 3),
            "trained_now": oof.trained_now, "oof_accuracy": accuracy,
            "thresholds": [round(float(t), 4) for t in per_class_thresholds(oof.probs, data.labels)],
        })
