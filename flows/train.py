"""The Prefect training flow behind ``vetset train``: train (with an in-training defense from
``trainers.defenses``), evaluate, save (the saved-model contract of trainers/saved.py) and
publish the metrics as an artifact. ``--defense curate`` goes through the
``curate-then-train`` flow (flows/curate_train.py), which audits first."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from trainers.defenses import DEFENSES, reads_scores
from trainers.train import train_and_save

from .params import TrainParams

DEFENSES_AVAILABLE = tuple(DEFENSES.names())


@task(name="train")
def train_task(params: TrainParams) -> dict:
    logger = get_run_logger()
    options = dict(params.defense_options)
    if params.defense == "curate":
        options.update(scores=params.scores, relabel=params.relabel, min_confidence=params.min_confidence)
    elif params.scores and reads_scores(params.defense):
        options.update(scores=params.scores)
    return train_and_save(params.data, params.out, test=params.test, model=params.model, preset=params.preset,
                          epochs=params.epochs, batch_size=params.batch_size, lr=params.lr, device=params.device,
                          seed=params.seed, trigger=params.trigger, tta_flip=params.tta_flip, log=logger.info,
                          defense=params.defense, defense_options=options,
                          baseline_metrics=params.baseline_metrics, processes=params.processes)


@flow(name="train", log_prints=True)
def train_flow(params: TrainParams) -> dict:
    metrics = train_task(params)
    lines = [f"# vetset train: `{params.out}`", "", f"- model: {metrics['model']}",
             f"- defense: {metrics.get('defense', 'none')}",
             f"- rows trained on: {metrics['n_train']} ({metrics['n_unreadable_skipped']} unreadable skipped)",
             f"- training: {metrics['train_seconds']:.1f} s ({metrics['sec_per_epoch']:.2f} s/epoch)"]
    for key in ("clean_acc", "asr", "ra", "der"):
        if metrics.get(key) is not None:
            lines.append(f"- {key}: {metrics[key]:.4f}")
    create_markdown_artifact("\n".join(lines), key="vetset-train-summary", description="vetset training run")
    return metrics
