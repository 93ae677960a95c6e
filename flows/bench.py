"""The Prefect flow behind ``vetset bench``: one task per cell of the benchmark matrix
(:mod:`cleansers.bench`), on the thread runner (one cell at a time by default: a cell
already uses every core) or on Dask (``task_runner="dask"``: cells spread over the
workers). Cells already stored under ``<out>/cells/`` are not submitted; a curate cell waits
for the detect cell whose audit it reuses, a purify cell for the undefended model. A rich
progress bar on the terminal and a Prefect progress artifact (``vetset-bench-progress``)
count the cells done; the tables end up in a markdown artifact (``vetset-bench``)."""
from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from cleansers.bench import BenchConfig, Cell, data_identity, list_cells, read_cell, run_cell, summary_line, \
    write_results

from .progress import StageProgress
from .runners import LazyRunner, resources, wants_gpu


@task(name="bench-cell", cache_policy=NO_CACHE, task_run_name="{cell.kind}-{cell.attack}-{cell.method}")
def cell_task(cfg: BenchConfig, cell: Cell) -> dict:
    return run_cell(cfg, cell)


def _dependency(cell: Cell, cells: list[Cell]) -> Cell | None:
    """The cell whose artifact ``cell`` reuses: curate -> detect, purify -> defense none."""
    want = {("defense", "curate"): ("detect", "audit")}.get((cell.kind, cell.method))
    if cell.kind == "purify":
        want = ("defense", "none")
    if want is None:
        return None
    return next((c for c in cells if (c.kind, c.method) == want and (c.attack, c.rate, c.seed) ==
                 (cell.attack, cell.rate, cell.seed)), None)


@flow(name="bench", log_prints=True)
def bench_flow(config: BenchConfig, task_runner: Literal["thread", "dask"] = "thread", workers: int | None = None,
               dask_address: str | None = None) -> dict:
    logger = get_run_logger()
    config.validate()
    data_id = data_identity(config)
    cells = list_cells(config, data_id)
    results: dict[Cell, dict] = {}
    for cell in cells:
        stored = read_cell(config, cell)
        if stored is not None:
            results[cell] = stored
    todo = [c for c in cells if c not in results]
    logger.info("bench: %d cells, %d stored already, %d to run", len(cells), len(results), len(todo))
    position = {c: i for i, c in enumerate(cells, 1)}
    runner = LazyRunner(task_runner, workers=workers if workers or task_runner == "dask" else 1,
                        dask_address=dask_address, gpu=wants_gpu(config.device))
    with runner, StageProgress(len(cells), key="vetset-bench-progress", description="bench cells") as progress:
        for cell in cells:
            if cell in results:
                progress.advance(1)
                logger.info("cell %d/%d %s: cached", position[cell], len(cells), cell.label)
        if todo:
            submitted: dict = {}
            with resources(task_runner, gpu=runner.gpu):
                for cell in todo:
                    dep = _dependency(cell, cells)
                    wait = [submitted[dep]] if dep in submitted else None
                    submitted[cell] = runner.get().submit(cell_task, parameters={"cfg": config, "cell": cell},
                                                          wait_for=wait)
            by_future = {f: c for c, f in submitted.items()}
            for fut in as_completed(list(by_future)):
                cell = by_future[fut]
                results[cell] = fut.result()  # a failed cell fails the run; finished cells stay stored
                progress.advance(1)
                logger.info("cell %d/%d %s", position[cell], len(cells), summary_line(cell, results[cell]))
    ordered = [results[c] for c in cells]
    paths = write_results(config, data_id, ordered)
    create_markdown_artifact(paths["markdown"].read_text(encoding="utf-8"), key="vetset-bench",
                             description="vetset bench tables")
    logger.info("bench: %d cells, %d run, %d cached; tables in %s", len(cells), len(todo), len(cells) - len(todo),
                config.out)
    return {"cells": len(cells), "ran": len(todo), "cached": len(cells) - len(todo),
            **{k: str(v) for k, v in paths.items()}}

