"""Fuse the detectors' verdicts into one ``dirty_score``, ``flagged``, ``reasons`` and
``suggested_label`` per row.

Threshold logic (the defaults: ``min_votes=1``, ``needs_agreement=("spectral",
"activation_clustering", "abl")``, ``agreement_votes=2``):
- each detector's score is mapped onto [0, 1] by rank, piecewise, so that the rows the
  detector flagged occupy (0.5, 1] and the rest [0, 0.5): a row's calibrated score is >= 0.5
  exactly when that detector fired, and it orders rows by the detector's own score;
- the detectors are of two kinds. *Specialists* with their own calibrated decision (AGPD,
  SentiNet, confident learning, VDC, and any detector not named in ``needs_agreement``) may
  flag a row alone: one vote is the default because they see different dirt (VDC and
  confident learning see wrong labels, AGPD and SentiNet see triggers), and requiring agreement would lose each one's
  unique catches. *Quota* detectors (``needs_agreement``: spectral signatures and activation
  clustering flag a fixed share of classes by design, ABL flags the expected dirty rate of
  the rows, dirty or not) count only when at least ``agreement_votes`` detectors (of any kind)
  fired on the row;
- the agreement asked of quota detectors is capped by how many detectors ran:
  ``agreement = min(agreement_votes, number of detectors that ran)``. An audit that ran a
  single quota detector (``--detectors abl``, say) therefore keeps that detector's own
  decision, as the user asked for nothing else; with two or more detectors a lone quota
  flag stays out (it is a fixed share of the rows, dirty or not, so on clean data it would be
  nothing but false positives);
- ``dirty_score = max(min_votes-th largest calibrated score among specialists,
  agreement-th largest among all detectors)``, so ``flagged = dirty_score >= 0.5``
  means exactly "``min_votes`` specialists fired, or ``agreement`` detectors did";
- unreadable rows get ``dirty_score = 1`` and the reason ``unreadable``;
- ``reasons`` names, for flagged rows, the detectors that fired, most confident first;
- ``suggested_label`` comes from the first detector (in the given order) that fired on a
  flagged row and offered one; -1 when none did.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.dataset import ImageDataset

from .base import DetectorResult


DEFAULT_NEEDS_AGREEMENT = ("spectral", "activation_clustering", "abl")


@dataclass
class FusionConfig:
    min_votes: int = 1
    needs_agreement: tuple[str, ...] = DEFAULT_NEEDS_AGREEMENT
    agreement_votes: int = 2

    def __post_init__(self) -> None:
        self.needs_agreement = tuple(self.needs_agreement)
        if self.min_votes < 1 or self.agreement_votes < 1:
            raise ValueError("min_votes and agreement_votes must be >= 1")


def _kth_largest(columns: list[np.ndarray], k: int, n: int) -> np.ndarray:
    """Row-wise k-th largest value of ``columns`` (0 where there are fewer than k columns)."""
    if len(columns) < k:
        return np.zeros(n)
    stack = np.sort(np.stack(columns, axis=1), axis=1)[:, ::-1]
    return stack[:, k - 1]


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
    specialists = [c for c, r in zip(calibrated, results) if r.name not in config.needs_agreement]
    agreement = min(max(config.agreement_votes, config.min_votes), max(len(results), 1))
    dirty = np.maximum(_kth_largest(specialists, config.min_votes, n), _kth_largest(calibrated, agreement, n))
    dirty = np.where(ds.unreadable, 1.0, dirty)
    frame["dirty_score"] = dirty
    frame["flagged"] = dirty >= 0.5
    frame["reasons"] = _reasons(ds, results, calibrated, frame["flagged"].to_numpy())
    frame["suggested_label"] = _suggested(n, results, frame["flagged"].to_numpy())
    return frame


def _reasons(ds: ImageDataset, results: list[DetectorResult], calibrated: list[np.ndarray],
             flagged: np.ndarray) -> list[str]:
    """The detectors that fired on each flagged row (most confident first); empty for rows
    the fusion did not flag (a lone quota detector's flag is not a reason)."""
    reasons = []
    for i in range(len(ds)):
        if not flagged[i]:
            reasons.append("")
            continue
        fired = sorted(
            ((calibrated[j][i], r.name) for j, r in enumerate(results) if r.flag[i]), reverse=True
        )
        names = ["unreadable"] if ds.unreadable[i] else []
        names += [name for _, name in fired]
        reasons.append(",".join(names))
    return reasons


def _suggested(n: int, results: list[DetectorResult], flagged: np.ndarray) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    for r in results:
        if r.suggested_label is None:
            continue
        take = (out < 0) & flagged & r.flag & (r.suggested_label >= 0)
        out[take] = r.suggested_label[take]
    return out
