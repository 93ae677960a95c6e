"""The audit's steps as plain functions (no Prefect), so that the Prefect flow, benchmarks
and the GPU machine (which has no Prefect) all run the same code."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.atomic import atomic_write_json
from pipelines.dataset import ImageDataset
from pipelines.errors import DataError
from pipelines.metrics import audit_metrics
from pipelines.outputs import RunPaths, staged_run, write_manifest, write_scores, write_truth
from pipelines.report import render_report
from pipelines.verdict import VERDICT, AuditVerdict, write_verdict

from .base import AuditContext, DetectorResult
from .fusion import FusionConfig, fuse_and_decide
from .run import run_detector

TRUTH_COLUMNS = ("sample_id", "is_poisoned", "is_noisy", "attack", "original_label")


@dataclass
class AuditResult:
    run_dir: Path
    frame: pd.DataFrame
    manifest: dict
    metrics: dict | None
    results: list[DetectorResult] = field(default_factory=list)
    verdict: AuditVerdict | None = None


def read_truth(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such truth file")
    try:
        truth = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable Parquet truth table ({str(exc).splitlines()[0]})") from None
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise DataError(f"{path}: the truth table lacks column(s) {', '.join(missing)}")
    truth = truth.copy()
    truth["sample_id"] = truth["sample_id"].astype(str)
    return truth


def detector_summary(results: list[DetectorResult]) -> dict[str, Any]:
    return {r.name: {"n_flagged": int(r.flag.sum()), **r.info} for r in results}


def evaluate(frame: pd.DataFrame, truth: pd.DataFrame | None, results: list[DetectorResult], timings: dict) -> dict:
    metrics: dict[str, Any] = {"timings_seconds": timings, "detectors": {r.name: {"seconds": r.info.get("seconds")} for r in results}}
    if truth is not None:
        metrics["detection"] = audit_metrics(frame, truth, [r.name for r in results])
    return metrics


def write_outputs(ds: ImageDataset, frame: pd.DataFrame, results: list[DetectorResult], paths: RunPaths, *,
                  run_id: str, config: dict, timings: dict, truth: pd.DataFrame | None,
                  verdict: AuditVerdict | None = None) -> tuple[dict, dict]:
    """Write scores, flagged, truth (when given), metrics, the verdict and the manifest;
    return (manifest, metrics)."""
    if len(frame) != len(ds):
        raise AssertionError(f"row count changed: {len(ds)} in, {len(frame)} out")
    metrics = evaluate(frame, truth, results, timings)  # first: a bad truth table fails before any write
    write_scores(frame, paths)
    if truth is not None:
        write_truth(truth, paths)
    atomic_write_json(metrics, paths.metrics)
    if verdict is not None:
        write_verdict(verdict, paths.root / VERDICT)
    manifest = write_manifest(ds, frame, paths, run_id=run_id, config=config, timings=timings,
                              detectors=detector_summary(results))
    return manifest, metrics


def run_audit(ds: ImageDataset, detectors: list[str], paths: RunPaths, *, run_id: str, ctx: AuditContext | None = None,
              options: dict[str, dict] | None = None, fusion: FusionConfig | None = None,
              truth: pd.DataFrame | None = None, config: dict | None = None) -> AuditResult:
    """The whole audit in one call, for scripts and the GPU machine."""
    ctx = ctx or AuditContext()
    options = options or {}
    timings: dict[str, float] = {}
    results = []
    for name in detectors:
        results.append(run_detector(name, ds, ctx, options.get(name)))
        timings[f"score:{name}"] = results[-1].info["seconds"]
    start = time.perf_counter()
    frame, verdict = fuse_and_decide(ds, results, fusion)
    timings["fuse"] = time.perf_counter() - start
    with staged_run(paths) as staged:  # all files or none
        manifest, metrics = write_outputs(ds, frame, results, staged, run_id=run_id, config=config or {},
                                          timings=timings, truth=truth, verdict=verdict)
        render_report(ds, frame, manifest, metrics, staged, verdict, truth=truth)
    return AuditResult(paths.root, frame, manifest, metrics, results, verdict)
