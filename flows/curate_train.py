"""The Prefect flow ``curate-then-train`` behind ``vetset train --defense curate``:
audit (or read a given scores.parquet) -> curate (drop flagged rows, or relabel rows with a
confident suggested label) -> train -> evaluate -> save (the model contract of
trainers/saved.py + metrics.json) and a markdown summary artifact.

The audit runs the plain audit steps (``cleansers.audit.run_audit``: the same detectors,
fusion and output tables as ``vetset audit``) into ``<out>/audit/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import cleansers  # noqa: F401  (registers the detectors)
from cleansers.audit import read_truth, run_audit
from cleansers.base import AuditContext
from pipelines.dataset import ImageDataset
from pipelines.loaders import load_dataset
from pipelines.outputs import RunPaths, new_run_id
from trainers.defenses.curate import curate_dataset, load_scores
from trainers.evaluate import load_trigger
from trainers.train import (find_trigger, monitor_for, read_baseline, resolve_training, run_metrics, save_run,
                            train_defended,
                            truth_beside)

from .params import TrainParams

AUDIT_DIR = "audit"


@task(name="load", cache_policy=NO_CACHE)
def load_task(source: str) -> ImageDataset:
    return load_dataset(source)


@task(name="audit", cache_policy=NO_CACHE)
def audit_task(ds: ImageDataset, params: TrainParams) -> pd.DataFrame:
    """Score every row with ``params.detectors`` and fuse; writes ``<out>/audit/``."""
    logger = get_run_logger()
    truth_path = Path(params.data).parent / "truth.parquet" if os.path.exists(params.data) else None
    truth = read_truth(truth_path) if truth_path is not None and truth_path.is_file() else None
    ctx = AuditContext(device=params.device, seed=params.seed, expected_dirty_rate=params.expected_dirty_rate)
    paths = RunPaths(Path(params.out) / AUDIT_DIR)
    result = run_audit(ds, list(params.detectors), paths, run_id=new_run_id(ds), ctx=ctx,
                       options=dict(params.detector_options), truth=truth,
                       config={"detectors": list(params.detectors), "detector_options": params.detector_options})
    logger.info("audit with %s flagged %d of %d rows; tables in %s", ", ".join(params.detectors),
                int(result.frame["flagged"].sum()), len(result.frame), paths.root)
    return result.frame


@task(name="curate", cache_policy=NO_CACHE)
def curate_task(ds: ImageDataset, scores: pd.DataFrame, relabel: bool, min_confidence: float):
    kept, info = curate_dataset(ds, scores, relabel=relabel, min_confidence=min_confidence)
    get_run_logger().info("%d flagged: %d dropped, %d relabelled; %d rows kept", info["n_flagged"],
                          info["n_dropped"], info["n_relabelled"], info["n_kept"])
    return kept, info


@task(name="train", cache_policy=NO_CACHE)
def train_task(kept: ImageDataset, params: TrainParams, arch: str, cfg, trigger_spec: dict | None) -> tuple[Any, dict]:
    logger = get_run_logger()
    monitor = monitor_for(load_dataset(params.test), trigger_spec, 1000, cfg) if params.test else None
    model, info = train_defended(kept, arch=arch, cfg=cfg, defense="none", seed=params.seed, log=logger.info,
                                 monitor=monitor)
    return model, info


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(model, info: dict, ds: ImageDataset, params: TrainParams, arch: str, cfg,
                  trigger_spec: dict | None) -> dict:
    test_ds = load_dataset(params.test) if params.test else None
    return run_metrics(model, info, ds, arch=arch, cfg=cfg, test_ds=test_ds, trigger_spec=trigger_spec,
                       tta_flip=params.tta_flip, baseline=read_baseline(params.baseline_metrics))


@task(name="save", cache_policy=NO_CACHE)
def save_task(model, info: dict, metrics: dict, ds: ImageDataset, params: TrainParams, arch: str, cfg,
              trigger_spec: dict | None) -> str:
    return str(save_run(model, info, metrics, params.out, arch=arch, train_ds=ds, cfg=cfg, trigger_spec=trigger_spec,
                        truth=truth_beside(params.data)))


@flow(name="curate-then-train", log_prints=True)
def curate_train_flow(params: TrainParams) -> dict:
    ds = load_task(params.data)
    if params.scores:
        scores = load_scores(params.scores)
        scores_source = params.scores
    else:
        scores = audit_task(ds, params)
        scores_source = str(Path(params.out) / AUDIT_DIR / "scores.parquet")
    kept, curation = curate_task(ds, scores, params.relabel, params.min_confidence)
    arch, cfg = resolve_training(params.model, params.preset, epochs=params.epochs, batch_size=params.batch_size,
                                 lr=params.lr, device=params.device, seed=params.seed)
    trigger = params.trigger or (find_trigger(params.data) if params.test else None)
    trigger_spec = load_trigger(trigger) if trigger else None
    model, info = train_task(kept, params, arch, cfg, trigger_spec)
    info["defense"] = "curate"
    info["defense_config"] = {"scores": scores_source, "relabel": params.relabel,
                              "min_confidence": params.min_confidence,
                              "detectors": None if params.scores else list(params.detectors)}
    info["curation"] = curation
    info["n_train"] = curation["n_kept"]
    metrics = evaluate_task(model, info, ds, params, arch, cfg, trigger_spec)
    save_task(model, info, metrics, ds, params, arch, cfg, trigger_spec)
    lines = [f"# vetset curate-then-train: `{params.out}`", "",
             f"- scores: `{scores_source}`",
             f"- flagged {curation['n_flagged']} of {curation['n_rows']} rows: {curation['n_dropped']} dropped, "
             f"{curation['n_relabelled']} relabelled",
             f"- model: {metrics['model']}, trained on {metrics['n_train']} rows in {metrics['train_seconds']:.1f} s"]
    for key in ("clean_acc", "asr", "ra", "der"):
        if metrics.get(key) is not None:
            lines.append(f"- {key}: {metrics[key]:.4f}")
    create_markdown_artifact("\n".join(lines), key="vetset-curate-train-summary",
                             description="vetset curate-then-train run")
    return metrics
