"""Fuse the detectors' verdicts into one ``dirty_score``, ``flagged``, ``reasons`` and
``suggested_label`` per row.

Threshold logic (the default, ``min_votes=1``):
- each detector's score is mapped onto [0, 1] by rank, piecewise, so that the rows the
  detector flagged occupy (0.5, 1] and the rest [0, 0.5): a row's calibrated score is >= 0.5
  exactly when that detector fired, and it orders rows by the detector's own score;
- ``dirty_score`` is the ``min_votes``-th largest calibrated score of the row (the maximum for
  one vote), so ``flagged = dirty_score >= 0.5`` means "at least ``min_votes`` detectors
  fired". One vote is the default because the detectors are specialists (VDC and confident
  learning see wrong labels, AGPD and ABL see triggers): requiring agreement would lose each
  one's unique catches.
- unreadable rows get ``dirty_score = 1`` and the reason ``unreadable``;
- ``reasons`` names the detectors that fired, most confident first;
- ``suggested_label`` comes from the first detector (in the given order) that fired on the
  row and offered one; -1 when none did.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.dataset import ImageDataset

from .base import DetectorResult


@dataclass
class FusionConfig:
    min_votes: int = 1


def calibrate(result: DetectorResult) -> np.ndarray:
    """Rank-map one detector's scores so that its flagged rows land in (0.5, 1]."""
    score, flag = result.score, result.flag
    out = np.full(score.shape, np.nan)
    valid = ~np.isnan(score)
    for mask, lo in ((flag & valid, 0.5), (~flag & valid, 0.0)):
        n = int(mask.sum())
        if n == 0:
            continue
        ranks = pd.Series(score[mask]).rank(method="average").to_numpy()  # 1..n
        out[mask] = lo + 0.5 * ranks / n if lo == 0.5 else 0.5 * (ranks - 0.5) / n
    return out


def fuse(ds: ImageDataset, results: list[DetectorResult], config: FusionConfig | None = None) -> pd.DataFrame:
    """The scores table (one row per dataset row) of the data contract."""
    config = config or FusionConfig()
    n = len(ds)
    frame = pd.DataFrame(
        {
            "sample_id": ds.sample_ids.astype(str),
            "index": np.arange(n, dtype=np.int64),
            "label": ds.labels,
            "label_name": [ds.class_names[k] for k in ds.labels],
            "is_unreadable": ds.unreadable,
        }
    )
    calibrated = []
    for r in results:
        if len(r.score) != n:
            raise ValueError(f"detector {r.name} returned {len(r.score)} scores for {n} rows")
        frame[f"{r.name}_score"] = r.score
        frame[f"{r.name}_flag"] = r.flag
        calibrated.append(np.nan_to_num(calibrate(r), nan=0.0))
    if calibrated:
        stack = np.sort(np.stack(calibrated, axis=1), axis=1)[:, ::-1]
        k = min(config.min_votes, stack.shape[1]) - 1
        dirty = stack[:, k]
    else:
        dirty = np.zeros(n)
    dirty = np.where(ds.unreadable, 1.0, dirty)
    frame["dirty_score"] = dirty
    frame["flagged"] = dirty >= 0.5
    frame["reasons"] = _reasons(ds, results, calibrated)
    frame["suggested_label"] = _suggested(n, results)
    return frame


def _reasons(ds: ImageDataset, results: list[DetectorResult], calibrated: list[np.ndarray]) -> list[str]:
    reasons = []
    for i in range(len(ds)):
        fired = sorted(
            ((calibrated[j][i], r.name) for j, r in enumerate(results) if r.flag[i]), reverse=True
        )
        names = ["unreadable"] if ds.unreadable[i] else []
        names += [name for _, name in fired]
        reasons.append(",".join(names))
    return reasons


def _suggested(n: int, results: list[DetectorResult]) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    for r in results:
        if r.suggested_label is None:
            continue
        take = (out < 0) & r.flag & (r.suggested_label >= 0)
        out[take] = r.suggested_label[take]
    return out
