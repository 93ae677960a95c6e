"""`vetset audit` and `vetset demo`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command
from .common import build_params, parse_value, print_table


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set abl.epochs=5`` -> {"abl": {"epochs": 5}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        det, dot, opt = key.partition(".")
        if not sep or not dot or not det or not opt:
            raise VetsetError(f"--set {item!r}: expected DETECTOR.OPTION=VALUE, e.g. abl.epochs=5")
        out.setdefault(det, {})[opt] = parse_value(value)
    return out


def _check_detector_options(detectors: list[str], options: dict[str, dict]) -> None:
    from cleansers.base import DETECTORS

    for det, opts in options.items():
        if det not in detectors:
            raise VetsetError(f"--set names detector {det!r}, which is not among --detectors {','.join(detectors)}")
        fields = DETECTORS.get(det).Config.__dataclass_fields__
        for opt in opts:
            if opt not in fields:
                raise VetsetError(f"--set {det}.{opt}: unknown option; {det} takes {', '.join(fields)}")


def _print_metrics(metrics: dict | None) -> None:
    from pipelines.report import METRIC_HEADER, metrics_rows

    print_table(METRIC_HEADER, metrics_rows(metrics))


def run_audit_cli(params) -> Any:
    """Validate the inputs (nothing is written when they are bad), run the flow, print where
    the results are."""
    from cleansers.audit import read_truth
    from cleansers.run import check_detectors

    from pipelines.loaders import validate_source
    from pipelines.outputs import check_writable

    from .. import logging_quiet
    from ..audit import audit_flow, load_options

    validate_source(params.data, load_options(params))
    check_writable(params.out or Path(params.runs_root) / "run")
    check_detectors(params.detectors, params.detector_options)  # a model not on disk: before Prefect starts
    if params.truth:
        read_truth(params.truth)
    if params.trusted:
        _check_trusted(params)
    logging_quiet.install()
    summary = audit_flow(params)
    if summary.verdict:
        print(f"verdict: {summary.verdict['headline']} (confidence: {summary.verdict['confidence']})")
    print(f"rows: {summary.rows}  flagged: {summary.flagged}  unreadable: {summary.unreadable}")
    for name, c in (summary.cache or {}).items():
        print(f"{name}: {c.get('rows_reused', 0)} rows reused from the cache, {c.get('rows_computed', 0)} scored"
              + (f" in {c['shards']} shard(s)" if c.get("shards") else ""))
    _print_metrics(summary.metrics)
    print(f"scores:  {Path(summary.run_dir) / 'scores.parquet'}")
    print(f"flagged: {Path(summary.run_dir) / 'flagged.parquet'}")
    print(f"verdict: {Path(summary.run_dir) / 'verdict.json'}")
    print(f"report:  {Path(summary.run_dir) / 'report.html'}")
    return summary


def _check_trusted(params) -> None:
    """Before the flow starts: the trusted set must load and, where the class names can be
    read cheaply, have the dataset's classes (the flow checks again after loading)."""
    from pipelines.loaders import peek_class_names, validate_source

    from ..audit import load_options, load_trusted

    validate_source(params.trusted, load_options(params))
    names = peek_class_names(params.data, load_options(params))
    trusted = load_trusted(params)
    if names is not None and trusted.class_names != names:
        raise VetsetError(f"--trusted {params.trusted}: its classes ({', '.join(trusted.class_names[:5])}...) "
                          f"differ from the dataset's ({', '.join(names[:5])}...)")


def audit_params(args: argparse.Namespace) -> Any:
    from ..params import AuditParams

    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    params = build_params(AuditParams, data=args.data, truth=args.truth, trusted=getattr(args, "trusted", None),
                          detectors=detectors,
                          detector_options=parse_sets(args.set or []), out=args.out, device=args.device,
                          seed=args.seed, min_votes=args.min_votes, expected_dirty_rate=args.expected_dirty_rate,
                          threads=args.threads, **run_options(args))
    _check_detector_options(params.detectors, params.detector_options)
    return params


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The caching / sharding / scale-out / event options, as AuditParams fields."""
    out = {k: getattr(args, k) for k in ("plugins", "cache_dir", "shard_size", "shard_retries", "task_runner",
                                         "dask_address", "workers", "alert_fraction")
           if getattr(args, k, None) is not None}
    out["cache"] = not args.no_cache
    out["refresh_cache"] = args.refresh_cache
    if args.dask_address and "task_runner" not in out:
        out["task_runner"] = "dask"
    return out


def add_run_arguments(sp: argparse.ArgumentParser) -> None:
    g = sp.add_argument_group("caching, shards and scale-out")
    g.add_argument("--plugin", dest="plugins", action="append", metavar="MODULE",
                   help="import a module first (it may register more detectors); repeatable")
    g.add_argument("--cache-dir", help="score cache and shard store (default $VETSET_CACHE_DIR, else the user cache dir; see `vetset cache info`)")
    g.add_argument("--no-cache", action="store_true", help="do not reuse cached scores")
    g.add_argument("--refresh-cache", action="store_true", help="recompute cached scores and overwrite them")
    g.add_argument("--shard-size", type=int, help="rows per scoring shard (default 1024)")
    g.add_argument("--shard-retries", type=int, help="retries of a failing shard (default 2)")
    g.add_argument("--task-runner", choices=["thread", "dask"], help="where shards run (default thread)")
    g.add_argument("--dask-address", help="Dask scheduler address (implies --task-runner dask); "
                                          "without it, dask starts a LocalCluster")
    g.add_argument("--workers", type=int, help="threads, or LocalCluster workers (default 2)")
    g.add_argument("--alert-fraction", type=float,
                   help="the completion event raises vetset.alert when the verdict found dirt; with this, "
                        "the flagged fraction must also reach it (default: not required)")


def add_detector_arguments(sp: argparse.ArgumentParser, default: str | None = None) -> None:
    from cleansers import DEFAULT_DETECTORS
    from cleansers.base import AUDIT_THREADS

    default = default or ",".join(DEFAULT_DETECTORS)
    sp.add_argument("--detectors", default=default, help=f"comma-separated detector names (default: {default})")
    sp.add_argument("--set", action="append", metavar="DET.OPT=VALUE", help="detector option, repeatable; `vetset detectors` lists every detector's options, types and defaults")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--min-votes", type=int, default=1, help="detectors that must fire to flag a row")
    sp.add_argument("--expected-dirty-rate", type=float, default=0.1)
    sp.add_argument("--threads", type=int, default=AUDIT_THREADS,
                    help=f"torch threads while the detectors run (default {AUDIT_THREADS}), fixed so that the same "
                         "data and seed "
                         "give the same flags on any machine; 0 = torch's own (faster on many cores, the flags "
                         "may then differ with the core count)")
    add_run_arguments(sp)


def _audit_arguments(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--data", required=True, help="dataset path, cached hub name, or embedded:digits")
    sp.add_argument("--truth", help="truth.parquet of a simulated dataset (for metrics)")
    sp.add_argument("--trusted", help="a small clean set with the same classes (AGPD's and AC's reference rows; "
                                      "without it they use each class's mid-confidence rows)")
    add_detector_arguments(sp)
    sp.add_argument("--out", help="run directory (default runs/<run_id>)")


def cmd_audit(args: argparse.Namespace) -> int:
    run_audit_cli(audit_params(args))
    return 0


def _demo_arguments(sp: argparse.ArgumentParser) -> None:
    # The demo audits with the default detectors (docs/benchmarks.md, "Demo").
    add_detector_arguments(sp)
    sp.add_argument("--out", default="runs/demo", help="where the dirty data and the audit go (default runs/demo)")


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.embedded import demo_spec, write_demo_dataset

    out = Path(args.out)
    spec = demo_spec()
    print(f"demo: scikit-learn digits (1,797 images, 32x32 RGB) with BadNets {spec.poison_rate:.0%} -> class "
          f"{spec.target} and {spec.noise_rate:.0%} {spec.noise} label noise")
    files = write_demo_dataset(out / "input")
    print(f"dirty dataset: {files['data']}  truth: {files['truth']}")
    args.data, args.truth, args.out = str(files["data"]), str(files["truth"]), str(out / "audit")
    run_audit_cli(audit_params(args))
    return 0


COMMANDS.register("audit")(Command("audit", "score every row, write scores/flagged Parquet and a report",
                                   _audit_arguments, cmd_audit))
COMMANDS.register("demo")(Command("demo", "audit the embedded default (digits with simulated dirt)",
                                  _demo_arguments, cmd_demo))
