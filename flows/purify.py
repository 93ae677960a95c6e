"""The Prefect flow behind ``vetset purify``: a trained model + a small clean set ->
purification method -> evaluation before/after -> a model directory in the saved-model
contract, metrics.json, report.md and a markdown artifact."""
from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from pipelines.loaders import load_dataset
from trainers.purify.run import purify_and_save, report_markdown

from .purify_params import PurifyParams


@task(name="purify")
def purify_task(params: PurifyParams) -> dict:
    from trainers.purify.residual import ResidualConfig

    logger = get_run_logger()
    clean = load_dataset(params.clean)
    test = load_dataset(params.test) if params.test else None
    return purify_and_save(clean=clean, method=params.method, out=params.out, model_dir=params.model,
                           arch=params.arch, state_dict=params.state_dict, test=test, trigger=params.trigger,
                           options=params.options, n_clean=params.n_clean, device=params.device, profile=params.profile,
                           seed=params.seed, log=logger.info, min_rows_per_class=params.min_rows_per_class,
                           allow_missing_classes=params.allow_missing_classes, holdout=params.holdout,
                           max_ca_drop=params.max_ca_drop, force=params.force,
                           residual=(ResidualConfig(rows=params.residual_rows, steps_per_class=params.residual_steps)
                                     if params.residual else False), audit=params.audit)


@flow(name="purify", log_prints=True)
def purify_flow(params: PurifyParams) -> dict:
    metrics = purify_task(params)
    create_markdown_artifact(report_markdown(metrics), key="vetset-purify-summary",
                             description=f"vetset purify ({params.method})")
    return metrics
