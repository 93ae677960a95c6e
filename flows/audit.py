"""The Prefect audit flow: load -> score (one task per detector) -> fuse -> write -> report,
plus a markdown summary artifact and a table artifact of the top flagged rows."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

import cleansers  # noqa: F401  (registers the detectors)
from cleansers.audit import read_truth, write_outputs
from cleansers.base import AuditContext, DetectorResult
from cleansers.fusion import FusionConfig, fuse
from cleansers.run import run_detector
from pipelines.dataset import ImageDataset
from pipelines.loaders import LoadOptions, load_dataset
from pipelines.outputs import RunPaths, new_run_id
from pipelines.report import METRIC_HEADER, metrics_rows, render_report, summary_rows

from .params import AuditParams


@dataclass
class AuditSummary:
    run_dir: str
    run_id: str
    rows: int
    flagged: int
    unreadable: int
    metrics: dict | None


def load_options(params: AuditParams) -> LoadOptions:
    return LoadOptions(image_column=params.image_column, label_column=params.label_column, split=params.split)


@task(name="load")
def load_task(params: AuditParams) -> ImageDataset:
    ds = load_dataset(params.data, load_options(params))
    get_run_logger().info("loaded %d rows (%d unreadable, %d resized) from %s", len(ds), ds.stats.n_unreadable,
                          ds.stats.n_resized, params.data)
    return ds


@task(name="score", task_run_name="score-{name}")
def score_task(name: str, ds: ImageDataset, ctx: AuditContext, options: dict) -> DetectorResult:
    result = run_detector(name, ds, ctx, options)
    get_run_logger().info("%s flagged %d rows in %.1f s", name, int(result.flag.sum()), result.info["seconds"])
    return result


@task(name="fuse")
def fuse_task(ds: ImageDataset, results: list[DetectorResult], min_votes: int) -> pd.DataFrame:
    return fuse(ds, results, FusionConfig(min_votes=min_votes))


@task(name="write")
def write_task(ds, frame, results, paths: RunPaths, run_id: str, config: dict, timings: dict, truth_path: str | None):
    truth = read_truth(truth_path) if truth_path else None
    return write_outputs(ds, frame, results, paths, run_id=run_id, config=config, timings=timings, truth=truth)


@task(name="report")
def report_task(ds, frame, manifest, metrics, paths: RunPaths) -> str:
    render_report(ds, frame, manifest, metrics, paths)
    return str(paths.report_html)


def _publish_artifacts(frame: pd.DataFrame, manifest: dict, metrics: dict | None, paths: RunPaths) -> None:
    lines = [f"# vetset audit {manifest['run_id']}", ""]
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


@flow(name="audit", log_prints=True)
def audit_flow(params: AuditParams) -> AuditSummary:
    start = time.perf_counter()
    ds = load_task(params)
    timings = {"load": time.perf_counter() - start}
    ctx = AuditContext(device=params.device, seed=params.seed, expected_dirty_rate=params.expected_dirty_rate)
    results = []
    for name in params.detectors:  # sequential: detectors share the context's model cache
        results.append(score_task(name, ds, ctx, params.detector_options.get(name, {})))
        timings[f"score:{name}"] = results[-1].info["seconds"]
    frame = fuse_task(ds, results, params.min_votes)
    run_id = new_run_id(ds)
    paths = RunPaths(Path(params.out) if params.out else Path(params.runs_root) / run_id)
    manifest, metrics = write_task(ds, frame, results, paths, run_id, params.model_dump(), timings, params.truth)
    report_task(ds, frame, manifest, metrics, paths)
    _publish_artifacts(frame, manifest, metrics, paths)
    return AuditSummary(str(paths.root), run_id, len(frame), int(frame["flagged"].sum()), int(ds.unreadable.sum()),
                        metrics)
