"""The ``vetset`` command line. Every command validates its input first, so that a mistake
gets one line on stderr and a non-zero exit, with nothing written."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from pipelines.errors import VetsetError

EXIT_INTERNAL = 1


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set abl.epochs=5`` -> {"abl": {"epochs": 5}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        det, dot, opt = key.partition(".")
        if not sep or not dot or not det or not opt:
            raise VetsetError(f"--set {item!r}: expected DETECTOR.OPTION=VALUE, e.g. abl.epochs=5")
        out.setdefault(det, {})[opt] = _parse_value(value)
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

    rows = metrics_rows(metrics)
    if not rows:
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(METRIC_HEADER)]
    print("  ".join(h.ljust(w) for h, w in zip(METRIC_HEADER, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def _audit(params) -> Any:
    from pipelines.loaders import validate_source
    from cleansers.audit import read_truth

    from .audit import audit_flow, load_options
    from . import logging_quiet

    validate_source(params.data, load_options(params))
    if params.truth:
        read_truth(params.truth)
    logging_quiet.install()
    summary = audit_flow(params)
    print(f"rows: {summary.rows}  flagged: {summary.flagged}  unreadable: {summary.unreadable}")
    _print_metrics(summary.metrics)
    print(f"scores:  {Path(summary.run_dir) / 'scores.parquet'}")
    print(f"flagged: {Path(summary.run_dir) / 'flagged.parquet'}")
    print(f"report:  {Path(summary.run_dir) / 'report.html'}")
    return summary


def _audit_params(args) -> Any:
    from pydantic import ValidationError

    from .params import AuditParams

    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    options = parse_sets(args.set or [])
    try:
        params = AuditParams(data=args.data, truth=args.truth, detectors=detectors, detector_options=options,
                             out=args.out, device=args.device, seed=args.seed, min_votes=args.min_votes,
                             expected_dirty_rate=args.expected_dirty_rate)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise VetsetError(f"{'.'.join(map(str, first['loc']))}: {first['msg'].removeprefix('Value error, ')}") from None
    _check_detector_options(params.detectors, params.detector_options)
    return params


def cmd_audit(args) -> int:
    _audit(_audit_params(args))
    return 0


def cmd_demo(args) -> int:
    from pipelines.embedded import demo_spec, write_demo_dataset

    out = Path(args.out)
    spec = demo_spec()
    print(f"demo: scikit-learn digits (1,797 images, 32x32 RGB) with BadNets {spec.poison_rate:.0%} -> class "
          f"{spec.target} and {spec.noise_rate:.0%} {spec.noise} label noise")
    files = write_demo_dataset(out / "input")
    print(f"dirty dataset: {files['data']}  truth: {files['truth']}")
    args.data, args.truth, args.out = str(files["data"]), str(files["truth"]), str(out / "audit")
    _audit(_audit_params(args))
    return 0


def cmd_poison(args) -> int:
    from pipelines.loaders import load_dataset
    from pipelines.simulate import SimulationSpec, simulate, write_simulation

    if not args.attack and not args.noise:
        raise VetsetError("nothing to simulate: give --attack and/or --noise")
    spec = SimulationSpec(attack=args.attack, poison_rate=args.rate, target=args.target,
                          attack_params=_parse_value(args.params) if args.params else {},
                          noise=args.noise, noise_rate=args.noise_rate, seed=args.seed)
    ds = load_dataset(args.data)
    result = simulate(ds, spec)
    files = write_simulation(result, args.out)
    print(json.dumps(result.counts))
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


def cmd_train(args) -> int:
    from pydantic import ValidationError

    from pipelines.loaders import validate_source

    from . import logging_quiet
    from .params import TrainParams
    from .train import DEFENSES_AVAILABLE, train_flow

    if args.defense not in DEFENSES_AVAILABLE:
        raise VetsetError(f"unknown defense {args.defense!r}; available: {', '.join(DEFENSES_AVAILABLE)}")
    try:
        params = TrainParams(data=args.data, out=args.out, test=args.test, model=args.model, preset=args.preset,
                             defense=args.defense, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             device=args.device, seed=args.seed, trigger=args.trigger, tta_flip=args.tta_flip)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise VetsetError(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    validate_source(params.data)
    if params.test:
        validate_source(params.test)
    if params.trigger and not Path(params.trigger).exists():
        raise VetsetError(f"{params.trigger}: no such trigger file")
    _check_model_name(params.model)
    logging_quiet.install()
    metrics = train_flow(params)
    for key in ("clean_acc", "asr", "ra"):
        if metrics.get(key) is not None:
            print(f"{key}: {metrics[key]:.4f}")
    print(f"model: {params.out}")
    return 0


def _check_model_name(name: str) -> None:
    from trainers.models import MODELS

    if name == "auto" or ":" in name:
        return
    MODELS.get(name)  # raises a one-line VetsetError naming the known models


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vetset", description="Find and neutralise poisoned and mislabelled images.")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", required=True)

    def audit_args(sp: argparse.ArgumentParser, data_required: bool = True) -> None:
        if data_required:
            sp.add_argument("--data", required=True, help="dataset path, cached hub name, or embedded:digits")
            sp.add_argument("--truth", help="truth.parquet of a simulated dataset (for metrics)")
        sp.add_argument("--detectors", default="abl", help="comma-separated detector names (default: abl)")
        sp.add_argument("--set", action="append", metavar="DET.OPT=VALUE", help="detector option, repeatable")
        sp.add_argument("--device", default="auto")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--min-votes", type=int, default=1, help="detectors that must fire to flag a row")
        sp.add_argument("--expected-dirty-rate", type=float, default=0.1)

    a = sub.add_parser("audit", help="score every row, write scores/flagged Parquet and a report")
    audit_args(a)
    a.add_argument("--out", help="run directory (default runs/<run_id>)")
    a.set_defaults(func=cmd_audit)

    d = sub.add_parser("demo", help="audit the embedded default (digits with simulated dirt)")
    audit_args(d, data_required=False)
    d.add_argument("--out", default="runs/demo", help="where the dirty data and the audit go (default runs/demo)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("poison", help="simulate backdoor poisoning and/or label noise on a clean dataset")
    s.add_argument("--data", required=True)
    s.add_argument("--attack", help="badnets, blended, sig, wanet")
    s.add_argument("--rate", type=float, default=0.1, help="poisoning rate (default 0.1)")
    s.add_argument("--target", type=int, default=0)
    s.add_argument("--params", help="attack parameters as JSON, e.g. '{\"alpha\": 0.1}'")
    s.add_argument("--noise", help="symmetric or pairflip")
    s.add_argument("--noise-rate", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="folder for data.parquet, truth.parquet, trigger.json")
    s.set_defaults(func=cmd_poison)

    t = sub.add_parser("train", help="train a model (optionally defended) and save it with its metrics")
    t.add_argument("--data", required=True)
    t.add_argument("--test", help="test set for clean accuracy (and ASR / RA with --trigger)")
    t.add_argument("--model", default="auto", help="small_cnn, preact_resnet18, torchvision:NAME, timm:NAME, auto")
    t.add_argument("--preset", default="auto", help="fast, backdoorbench, cpu_small, auto")
    t.add_argument("--defense", default="none")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--trigger", help="trigger.json written by `vetset poison`")
    t.add_argument("--tta-flip", action="store_true")
    t.add_argument("--out", required=True, help="model directory to write")
    t.set_defaults(func=cmd_train)
    return p


def run(argv: list[str] | None, handler: Callable[[argparse.Namespace], int] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return (handler or args.func)(args)
    except VetsetError as exc:
        print(f"vetset: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("vetset: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal failure: one line unless --debug
        if args.debug or os.environ.get("VETSET_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"vetset: internal error: {type(exc).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
