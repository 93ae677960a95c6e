"""``outlier``: a cheap, row-independent trigger heuristic from pixel statistics alone.

A patch trigger (BadNets' small white/checkered square, a sticker) is a tiny region whose
high-frequency energy is far above the rest of its image. For each image the detector takes
the absolute discrete Laplacian (summed over RGB), sums it over every ``patch`` x ``patch``
window, and scores the row by ``log((max window + eps) / (median window + eps))``: how much
its most "edgy" small window stands out from the image's typical window. A window that is
also saturated (near-white or near-black) gets its energy multiplied by
``1 + saturation_weight * saturated fraction``.

The score of a row depends on that row's pixels and the config only, never on other rows,
so ``row_independent = True``: audits cache it per row (sample_id + content hash) and shard
it fully. Flags need every score: the ``flag_rate`` highest rows are flagged (default: the
audit's expected dirty rate), decided in ``finalize`` once all shards are in.

Limits (be honest with it): it is a baseline, not a defense. It only sees localized,
high-contrast triggers (BadNets-like patches); blended, SIG, WaNet and other global or
smooth triggers and all label noise are invisible to it. Natural images with small, sharp,
bright details (text, specular highlights, wire fences) score high too, so expect many false
positives; use it with ``--min-votes`` or as a pre-filter, and use the model-based detectors
for the real verdict. Measured on 2,000 rows of the shared (JPEG) CIFAR-10 with 10% poisoned:
AUROC 0.81 against BadNets (3x3 patch), 0.44 against Blended (no better than chance). It
needs no model, no GPU and no training: about 1,000-3,000 images/s on a shared 2-core CPU
at 32x32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.dataset import ImageDataset
from pipelines.errors import DataError

from .base import DETECTORS, AuditContext, Detector, DetectorResult


def _window_sums(x: np.ndarray, k: int) -> np.ndarray:
    """Sums over every k x k window (valid positions) of (N, H, W) arrays, via cumulative sums."""
    c = np.cumsum(np.cumsum(x, axis=1), axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    return c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]


def patch_scores(images: np.ndarray, patch: int = 3, saturation_weight: float = 1.0, chunk: int = 2048) -> np.ndarray:
    """The outlier score of each uint8 (N, H, W, 3) image (see the module docstring)."""
    out = np.empty(len(images), dtype=np.float64)
    eps = 1.0
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float32)
        p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        lap = np.abs(4 * x - p[:, :-2, 1:-1] - p[:, 2:, 1:-1] - p[:, 1:-1, :-2] - p[:, 1:-1, 2:]).sum(axis=3)
        energy = _window_sums(lap, patch)
        if saturation_weight:
            sat = ((x.min(axis=3) >= 235) | (x.max(axis=3) <= 20)).astype(np.float32)
            energy = energy * (1.0 + saturation_weight * _window_sums(sat, patch) / (patch * patch))
        flat = energy.reshape(len(x), -1)
        out[start:start + len(x)] = np.log((flat.max(axis=1) + eps) / (np.median(flat, axis=1) + eps))
    return out


@DETECTORS.register("outlier")
class PatchOutlierDetector(Detector):
    name = "outlier"
    kind = "ranker"
    row_independent = True

    @dataclass
    class Config:
        """patch: window side in pixels (3 matches BadNets' 3x3 square on 32x32 images).
        saturation_weight: extra weight for saturated windows (0 = energy only).
        flag_rate: fraction of rows flagged (None = the audit's expected dirty rate)."""

        patch: int = 3
        saturation_weight: float = 1.0
        flag_rate: float | None = None

    def prepare(self, data: ImageDataset, ctx: AuditContext) -> Any:
        h, w = data.image_size if len(data) else (self.config.patch, self.config.patch)
        if not 1 <= self.config.patch <= min(h, w):
            raise DataError(f"outlier: patch={self.config.patch} must be between 1 and the image side {min(h, w)} "
                            f"(the images are {h}x{w})")
        return None

    def score_rows(self, data: ImageDataset, rows: np.ndarray, ctx: AuditContext, state: Any) -> np.ndarray:
        return patch_scores(data.images, self.config.patch, self.config.saturation_weight)

    def finalize(self, data: ImageDataset, scores: np.ndarray, ctx: AuditContext, state: Any) -> DetectorResult:
        scores = np.asarray(scores, dtype=np.float64)
        rate = self.config.flag_rate if self.config.flag_rate is not None else ctx.expected_dirty_rate
        k = int(round(rate * len(scores)))
        flag = np.zeros(len(scores), dtype=bool)
        if k > 0:
            flag[np.argsort(-scores, kind="stable")[:k]] = True
        threshold = float(scores[flag].min()) if k > 0 else float("inf")
        return DetectorResult(self.name, scores, flag, info={"flag_rate": rate, "threshold": threshold})

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        state = self.prepare(data, ctx)
        return self.finalize(data, self.score_rows(data, np.arange(len(data)), ctx, state), ctx, state)
