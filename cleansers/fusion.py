"""Fuse the detectors' results into the scores table: one row per dataset row with each
detector's score and flag, ``dirty_score``, ``flagged``, ``reasons``, ``suggested_label``,
``is_backdoor`` (flagged as injected) and ``is_label_issue`` (flagged as a wrong label).

The decisions are the verdict's (:func:`cleansers.verdict.decide`, computed once): which
classes hold injected rows and which rows are flagged. ``dirty_score`` orders rows: each
detector's score is rank-mapped onto [0, 1] so that the rows it flagged sit in (0.5, 1]
(:func:`calibrate`); a row's dirty score is the largest of those, squeezed into [0.5, 1]
for flagged rows and [0, 0.5) for the others, so ``flagged == (dirty_score >= 0.5)`` holds
exactly; unreadable rows get 1. Detectors declare their kind (``Detector.kind``:
specialist, label_noise or ranker); ``FusionConfig.needs_agreement`` can override which
ones are rankers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipelines.dataset import ImageDataset
from pipelines.verdict import AuditVerdict

from .base import DetectorResult
from .verdict import VerdictConfig as FusionConfig
from .verdict import calibrate, decide

__all__ = ["FusionConfig", "calibrate", "fuse", "fuse_and_decide"]


def fuse_and_decide(ds: ImageDataset, results: list[DetectorResult],
                    config: FusionConfig | None = None) -> tuple[pd.DataFrame, AuditVerdict]:
    n = len(ds)
    for r in results:
        if len(r.score) != n:
            raise ValueError(f"detector {r.name} returned {len(r.score)} scores for {n} rows")
    decision = decide(ds, results, config)
    frame = pd.DataFrame({
        "sample_id": ds.sample_ids.astype(str),
        "index": np.arange(n, dtype=np.int64),
        "label": ds.labels,
        "label_name": [ds.class_names[k] for k in ds.labels],
        "is_unreadable": ds.unreadable,
    })
    top = np.zeros(n)
    for r in results:
        frame[f"{r.name}_score"] = r.score
        frame[f"{r.name}_flag"] = r.flag
        top = np.maximum(top, decision.calibrated[r.name])
    flagged = decision.backdoor | decision.label_issue | decision.other | ds.unreadable
    dirty = np.where(flagged, 0.5 + 0.5 * top, np.minimum(0.5 * top, 0.4999))
    dirty = np.where(ds.unreadable, 1.0, dirty)
    frame["dirty_score"] = dirty
    frame["flagged"] = flagged
    frame["is_backdoor"] = decision.backdoor
    frame["is_label_issue"] = decision.label_issue
    frame["reasons"] = [",".join(r) if f else "" for r, f in zip(decision.row_reasons, flagged)]
    frame["suggested_label"] = np.where(flagged, decision.suggested, -1)
    return frame, decision.verdict


def fuse(ds: ImageDataset, results: list[DetectorResult], config: FusionConfig | None = None) -> pd.DataFrame:
    """The scores table (see :func:`fuse_and_decide`, which also returns the verdict)."""
    return fuse_and_decide(ds, results, config)[0]
