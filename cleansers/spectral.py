"""Spectral signatures (Tran, Li & Madry, NeurIPS 2018), on the shared detection model.

Per class: centre the penultimate features, take the top right singular vector v, score each
row by its squared projection <f - mean, v>^2 and flag the top ``1.5 * eps`` of the class
(the paper removes 1.5 eps; BackdoorBench's ``percentile = 85`` is the same rule at
eps = 0.1). ``eps`` defaults to ``AuditContext.expected_dirty_rate`` (0.1). It flags that
share of EVERY class, poisoned or not, so its false-positive rate is ~1.5 eps by design:
it is a baseline, and fusion counts it only together with another detector.

Score: the squared projection divided by the class's flagging threshold, so > 1 exactly
for flagged rows and comparable across classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.dataset import ImageDataset

from .base import DETECTORS, AuditContext, Detector, DetectorResult
from .detection_model import ModelSpec, get_detection_model, model_features


@dataclass
class SpectralConfig:
    eps: float | None = None  # None = ctx.expected_dirty_rate
    multiplier: float = 1.5  # Tran et al.: remove 1.5 * eps per class
    arch: str = "auto"
    epochs: int | None = None


def spectral_scores(features: np.ndarray) -> np.ndarray:
    """Squared projection of centred features on their top singular vector."""
    centred = features - features.mean(0, keepdims=True)
    if len(centred) < 2:
        return np.zeros(len(centred))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


@DETECTORS.register("spectral")
class Spectral(Detector):
    name = "spectral"
    kind = "ranker"
    Config = SpectralConfig

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg: SpectralConfig = self.config
        eps = ctx.expected_dirty_rate if cfg.eps is None else cfg.eps
        frac = min(1.0, cfg.multiplier * eps)
        dm = get_detection_model(data, ctx, ModelSpec.from_options(cfg.arch, cfg.epochs))
        feats = model_features(data, dm, ctx).astype(np.float64)
        score = np.zeros(len(data))
        flag = np.zeros(len(data), dtype=bool)
        for k in range(data.num_classes):
            rows = np.flatnonzero(data.labels == k)
            if len(rows) < 2:
                continue
            s = spectral_scores(feats[rows])
            n_flag = int(round(frac * len(rows)))
            if n_flag == 0:
                score[rows] = s / (s.max() + 1e-12)
                continue
            thr = np.sort(s)[::-1][n_flag - 1]
            score[rows] = s / max(thr, 1e-12)
            top = np.argsort(-s, kind="stable")[:n_flag]
            flag[rows[top]] = True
        return DetectorResult(self.name, score, flag, None,
                              {"model": dm.describe(), "eps": eps, "flag_fraction_per_class": frac})
