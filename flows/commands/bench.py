"""`vetset bench`: the attack x detector / defense / purifier matrix (BackdoorBench's) as a
Prefect flow, one task per cell, every cell cached under ``--out`` (cleansers/bench.py;
``python -m cleansers.bench`` runs the same cells without Prefect)."""
from __future__ import annotations

import argparse

from ..cli import COMMANDS, Command


def _arguments(p: argparse.ArgumentParser) -> None:
    from cleansers.bench import add_arguments

    add_arguments(p)
    p.add_argument("--task-runner", choices=("thread", "dask"), default="thread",
                   help="thread: one cell at a time (default); dask: cells spread over the workers")
    p.add_argument("--workers", type=int, help="threads (default 1) or LocalCluster workers (default 2)")
    p.add_argument("--dask-address", help="an existing Dask scheduler (with --task-runner dask)")
    p.add_argument("--no-prefect", action="store_true", help="run the cells in this process, without Prefect")


def cmd_bench(args: argparse.Namespace) -> int:
    from cleansers.bench import config_from_args, run_bench

    from pipelines.errors import VetsetError

    if args.workers is not None and args.workers < 1:
        raise VetsetError(f"--workers must be >= 1, got {args.workers}")
    config = config_from_args(args)
    config.validate()  # input mistakes: one line, before any server starts
    if args.no_prefect:
        run = run_bench(config, log=lambda s: print(s, flush=True))
        summary = {"cells": len(run.cells), "ran": run.ran, "cached": run.cached,
                   **{k: str(v) for k, v in run.paths.items()}}
    else:
        from .. import logging_quiet
        from ..bench import bench_flow

        logging_quiet.install()
        summary = bench_flow(config, task_runner=args.task_runner, workers=args.workers,
                             dask_address=args.dask_address)
    print(f"cells: {summary['cells']} ({summary['ran']} run, {summary['cached']} cached)")
    for key in ("markdown", "parquet", "figure"):
        if key in summary:
            print(f"{key}: {summary[key]}")
    return 0


COMMANDS.register("bench")(Command("bench", "benchmark matrix: attacks x detectors / defenses / purifiers, "
                                            "cached per cell", _arguments, cmd_bench))
