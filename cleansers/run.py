"""Run one registered detector over a dataset: unreadable rows are not shown to detectors;
they come back with a NaN score and no flag (fusion flags them as ``unreadable``)."""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from pipelines.dataset import ImageDataset
from trainers.threads import fixed_threads

from .base import DETECTORS, AuditContext, DetectorResult


def build_detector(name: str, options: dict[str, Any] | None = None):
    cls = DETECTORS.get(name)
    return cls(**(options or {}))


def check_detectors(names: list[str], options: dict[str, dict[str, Any]] | None = None) -> None:
    """Each detector's cheap option checks (``Detector.check``: a model not on disk...), before
    any data is read or any detector runs: a one-line VetsetError instead of a failure after
    the earlier detectors' work."""
    for name in names:
        build_detector(name, (options or {}).get(name)).check()


def run_detector(name: str, ds: ImageDataset, ctx: AuditContext, options: dict[str, Any] | None = None) -> DetectorResult:
    detector = build_detector(name, options)
    readable = np.flatnonzero(~ds.unreadable)
    ctx.rows = readable
    start = time.perf_counter()
    with fixed_threads(ctx.threads):
        inner = detector.score(ds.subset(readable) if len(readable) < len(ds) else ds, ctx)
    seconds = time.perf_counter() - start
    result = expand_result(name, len(ds), readable, inner, detector.config, seconds)
    ctx.results[name] = result
    return result


def readable_rows(ds: ImageDataset) -> tuple[np.ndarray, ImageDataset]:
    """The positions of the readable rows and the dataset a detector is shown (those rows)."""
    readable = np.flatnonzero(~ds.unreadable)
    return readable, (ds.subset(readable) if len(readable) < len(ds) else ds)


def expand_result(name: str, n: int, readable: np.ndarray, inner: DetectorResult, config: Any,
                  seconds: float) -> DetectorResult:
    """A detector's result on the readable rows, spread back over all ``n`` rows (NaN score,
    no flag where unreadable)."""
    score = np.full(n, np.nan)
    flag = np.zeros(n, dtype=bool)
    score[readable], flag[readable] = inner.score, inner.flag
    suggested = None
    if inner.suggested_label is not None:
        suggested = np.full(n, -1, dtype=np.int64)
        suggested[readable] = inner.suggested_label
    info = dict(inner.info, seconds=seconds, config=_config_dict(config))
    arrays = {}
    for key, value in inner.arrays.items():
        value = np.asarray(value, dtype=np.float64)
        full = np.full((n,) + value.shape[1:], np.nan)
        full[readable] = value
        arrays[key] = full
    return DetectorResult(name, score, flag, suggested, info, arrays)


def _config_dict(cfg: Any) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(cfg) if is_dataclass(cfg) else dict(getattr(cfg, "__dict__", {}))
