"""Run one registered detector over a dataset: unreadable rows are not shown to detectors;
they come back with a NaN score and no flag (fusion flags them as ``unreadable``)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipelines.dataset import ImageDataset

from .base import DETECTORS, AuditContext, DetectorResult


def build_detector(name: str, options: dict[str, Any] | None = None):
    cls = DETECTORS.get(name)
    return cls(**(options or {}))


def run_detector(name: str, ds: ImageDataset, ctx: AuditContext, options: dict[str, Any] | None = None) -> DetectorResult:
    detector = build_detector(name, options)
    readable = np.flatnonzero(~ds.unreadable)
    ctx.rows = readable
    start = time.perf_counter()
    inner = detector.score(ds.subset(readable) if len(readable) < len(ds) else ds, ctx)
    seconds = time.perf_counter() - start
    n = len(ds)
    score = np.full(n, np.nan)
    flag = np.zeros(n, dtype=bool)
    score[readable], flag[readable] = inner.score, inner.flag
    suggested = None
    if inner.suggested_label is not None:
        suggested = np.full(n, -1, dtype=np.int64)
        suggested[readable] = inner.suggested_label
    info = dict(inner.info, seconds=seconds, config=_config_dict(detector.config))
    result = DetectorResult(name, score, flag, suggested, info)
    ctx.results[name] = result
    return result


def _config_dict(cfg: Any) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(getattr(cfg, "__dict__", {}))
