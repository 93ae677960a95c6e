"""The Prefect audit flow: load -> score (per detector: one cached task, or shards on the task
runner; see scoring.py) -> fuse -> write -> report, plus a markdown summary artifact, a table
artifact of the top flagged rows, a progress artifact, and a ``vetset.audit.completed`` event."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import cleansers  # noqa: F401  (registers the detectors)
import cleansers.pixel_stats  # noqa: F401  (outlier, also when cleansers/__init__ lacks it)
from cleansers.audit import read_truth, write_outputs
from cleansers.base import AuditContext, DetectorResult
from cleansers.fusion import FusionConfig, fuse_and_decide
from cleansers.run import check_detectors
from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError
from pipelines.loaders import LoadOptions, load_dataset
from pipelines.outputs import RunLock, RunPaths, check_writable, new_run_id, staged_run, writing_run
from pipelines.report import METRIC_HEADER, metrics_rows, render_report, summary_rows
from pipelines.verdict import AuditVerdict

from .caching import default_cache_dir
from .events import audit_payload, emit_audit_completed
from .params import AuditParams
from .progress import StageProgress
from .runners import LazyRunner, wants_gpu
from .scoring import Scorer


@dataclass
class AuditSummary:
    run_dir: str
    run_id: str
    rows: int
    flagged: int
    unreadable: int
    metrics: dict | None
    cache: dict | None = None  # per detector: rows reused / computed, shards
    verdict: dict | None = None  # AuditVerdict.event_summary()


def load_options(params: AuditParams) -> LoadOptions:
    return LoadOptions(image_column=params.image_column, label_column=params.label_column, split=params.split)


@task(name="load")
def load_task(params: AuditParams) -> ImageDataset:
    ds = load_dataset(params.data, load_options(params))
    get_run_logger().info("loaded %d rows (%d unreadable, %d resized) from %s", len(ds), ds.stats.n_unreadable,
                          ds.stats.n_resized, params.data)
    return ds


@task(name="load-trusted")
def load_trusted_task(params: AuditParams, ds: ImageDataset) -> ImageDataset:
    trusted = load_trusted(params, ds)
    get_run_logger().info("trusted set: %d rows from %s", len(trusted), params.trusted)
    return trusted


def load_trusted(params: AuditParams, ds: ImageDataset | None = None) -> ImageDataset:
    """The trusted clean set, with the dataset's class names and image size (else an error)."""
    trusted = load_dataset(params.trusted, load_options(params))
    if ds is not None and trusted.class_names != ds.class_names:
        raise VetsetError(f"--trusted {params.trusted}: its classes ({', '.join(trusted.class_names[:5])}...) differ "
                          f"from the dataset's ({', '.join(ds.class_names[:5])}...)")
    if ds is not None and trusted.image_size != ds.image_size:
        opts = load_options(params)
        opts.image_size = ds.image_size
        trusted = load_dataset(params.trusted, opts)
    return trusted


@task(name="fuse")
def fuse_task(ds: ImageDataset, results: list[DetectorResult], min_votes: int) -> tuple[pd.DataFrame, AuditVerdict]:
    return fuse_and_decide(ds, results, FusionConfig(min_votes=min_votes))


@task(name="write")
def write_task(ds, frame, results, paths: RunPaths, run_id: str, config: dict, timings: dict, truth_path: str | None,
               verdict: AuditVerdict | None = None):
    truth = read_truth(truth_path) if truth_path else None
    with writing_run(paths):
        return write_outputs(ds, frame, results, paths, run_id=run_id, config=config, timings=timings,
                             truth=truth, verdict=verdict)


@task(name="report")
def report_task(ds, frame, manifest, metrics, paths: RunPaths, verdict: AuditVerdict | None = None,
                truth_path: str | None = None) -> str:
    truth = read_truth(truth_path) if truth_path else None
    with writing_run(paths):
        render_report(ds, frame, manifest, metrics, paths, verdict, truth=truth)
    return str(paths.report_html)


def _publish_artifacts(frame: pd.DataFrame, manifest: dict, metrics: dict | None, paths: RunPaths,
                       verdict: AuditVerdict) -> None:
    lines = [f"# vetset audit {manifest['run_id']}", "", f"**{verdict.headline}** (confidence: {verdict.confidence})", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary_rows(manifest)]
    lines += ["", f"Report: `{paths.report_html.resolve()}`", f"Tables: `{paths.root.resolve()}`"]
    rows = metrics_rows(metrics)
    if rows:
        lines += ["", "| " + " | ".join(METRIC_HEADER) + " |", "|" + "---|" * len(METRIC_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    create_markdown_artifact("\n".join(lines), key="vetset-audit-summary", description="vetset audit summary")
    top = frame[frame["flagged"]].sort_values("dirty_score", ascending=False).head(50)
    table = [
        {"sample_id": r.sample_id, "label": r.label_name, "dirty_score": round(float(r.dirty_score), 4),
         "reasons": r.reasons, "suggested_label": int(r.suggested_label)}
        for r in top.itertuples()
    ]
    create_table_artifact(table, key="vetset-top-flagged", description="top flagged rows")


def _cache_summary(results: list[DetectorResult]) -> dict:
    return {r.name: {k: r.info[k] for k in ("cache", "cache_key", "rows_reused", "rows_computed", "shards", "cache_note")
                     if k in r.info} for r in results}


@flow(name="audit", log_prints=True)
def audit_flow(params: AuditParams = AuditParams()) -> AuditSummary:
    """Before any work, the run directory must be writable and not in use: ``params.out`` is
    locked for the whole run (a second audit of it is refused), the default
    ``runs_root/<run_id>`` only while it is written. The files are staged and moved into place
    together (pipelines/outputs.py)."""
    if params.out:
        check_writable(params.out)
        with RunLock(params.out) as lock:
            return _audit(params, lock)
    check_writable(Path(params.runs_root) / "run")
    return _audit(params, None)


def _audit(params: AuditParams, lock: RunLock | None) -> AuditSummary:
    logger = get_run_logger()
    start = time.perf_counter()
    check_detectors(params.detectors, params.detector_options)  # a deployment run has no CLI to check first
    ds = load_task(params)
    timings = {"load": time.perf_counter() - start}
    cache_dir = Path(params.cache_dir) if params.cache_dir else default_cache_dir(params.runs_root)
    ctx = AuditContext(device=params.device, seed=params.seed, expected_dirty_rate=params.expected_dirty_rate,
                       threads=params.threads or None,
                       trusted=load_trusted_task(params, ds) if params.trusted else None,
                       checkpoint_dir=str(cache_dir / "checkpoints") if params.cache else None)
    results = []
    runner = LazyRunner(params.task_runner, workers=params.workers, dask_address=params.dask_address,
                        gpu=wants_gpu(params.device))
    with runner, StageProgress(len(ds) * len(params.detectors), description="scoring") as progress:
        scorer = Scorer(params, ds, ctx, runner, progress, cache_dir)
        for name in params.detectors:  # in order: detectors share the context (model cache, cascades)
            t0 = time.perf_counter()
            results.append(scorer.score(name))
            timings[f"score:{name}"] = time.perf_counter() - t0
            info = results[-1].info
            logger.info("%s: %d flagged; %d rows reused from the cache, %d scored (%.1f s)", name,
                        int(results[-1].flag.sum()), info.get("rows_reused", 0), info.get("rows_computed", 0),
                        timings[f"score:{name}"])
    frame, verdict = fuse_task(ds, results, params.min_votes)
    run_id = new_run_id(ds)
    paths = RunPaths(Path(params.out) if params.out else Path(params.runs_root) / run_id)
    config = dict(params.model_dump(), cache=_cache_summary(results))
    with staged_run(paths, lock) as staged:  # all files or none
        manifest, metrics = write_task(ds, frame, results, staged, run_id, config, timings, params.truth, verdict)
        report_task(ds, frame, manifest, metrics, staged, verdict, params.truth)
    _publish_artifacts(frame, manifest, metrics, paths, verdict)
    logger.info("verdict: %s", verdict.headline)
    summary = AuditSummary(str(paths.root), run_id, len(frame), int(frame["flagged"].sum()), int(ds.unreadable.sum()),
                           metrics, _cache_summary(results), verdict.event_summary())
    if params.emit_events:
        payload = audit_payload(fingerprint=ds.fingerprint, rows=summary.rows, flagged=summary.flagged,
                                run_dir=str(paths.root.resolve()), run_id=run_id, data=params.data,
                                alert_fraction=params.alert_fraction, verdict=verdict.event_summary())
        emit_audit_completed(payload, flow_run.get_id())
    return summary
