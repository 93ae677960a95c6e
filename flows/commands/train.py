"""`vetset train`: train a (defended) model and save it in the model-directory contract.

``--defense none|abl|pdb`` runs the ``train`` flow; ``--defense curate`` runs the
``curate-then-train`` flow (audit with ``--detectors``, or read ``--scores``; drop or
``--relabel`` the flagged rows; train; evaluate; save)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command
from .common import build_params, parse_value


def _arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data", required=True)
    t.add_argument("--test", help="test set for clean accuracy (and ASR / RA with --trigger)")
    t.add_argument("--model", default="auto", help="small_cnn, preact_resnet18, torchvision:NAME, timm:NAME, auto")
    t.add_argument("--preset", default="auto", help="fast, backdoorbench, cpu_small, auto")
    t.add_argument("--defense", default="none", help="none, abl, pdb, curate (audit, drop flagged rows, train)")
    t.add_argument("--defense-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the defense, e.g. isolation_epochs=10 (abl), repeats=3 (pdb); repeatable; "
                        "`vetset defenses` lists them with their defaults")
    t.add_argument("--scores", help="curate: an audit's scores.parquet (else the audit runs first); "
                                    "pdb: its flagged rows are never drawn as defensive rows; "
                                    "abl: its flagged rows are the ones unlearned")
    t.add_argument("--detectors", help="curate: comma-separated detectors for the audit "
                                       "(default: cleansers.DEFAULT_DETECTORS)")
    t.add_argument("--set", dest="detector_set", action="append", default=[], metavar="DETECTOR.OPTION=VALUE",
                   help="curate: a detector option for the audit, e.g. abl.epochs=10; repeatable (`vetset detectors`)")
    t.add_argument("--relabel", action="store_true",
                   help="curate: give flagged rows their suggested label (when a detector offers one) instead of dropping")
    t.add_argument("--baseline-metrics", help="an undefended run's metrics.json, for DER in metrics.json")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--trigger", help="trigger.json written by `vetset poison` (default: the one beside --data)")
    t.add_argument("--tta-flip", action="store_true")
    t.add_argument("--processes", type=int, default=1,
                   help="train in N processes through accelerate (one GPU each; with --device cpu, CPU processes); "
                        "--batch-size is the global batch (docs/training.md)")
    t.add_argument("--out", required=True, help="model directory to write")


def check_model_name(name: str) -> None:
    from trainers.models import MODELS

    if name == "auto" or ":" in name:
        return
    MODELS.get(name)  # raises a one-line VetsetError naming the known models


def _pairs(items: list[str], flag: str) -> list[tuple[str, object]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VetsetError(f"{flag} wants KEY=VALUE, got {item!r}")
        out.append((key.strip(), parse_value(value)))
    return out


def _detector_options(items: list[str]) -> dict[str, dict]:
    options: dict[str, dict] = {}
    for key, value in _pairs(items, "--set"):
        detector, dot, option = key.partition(".")
        if not dot or not option:
            raise VetsetError(f"--set wants DETECTOR.OPTION=VALUE, got {key!r}")
        options.setdefault(detector, {})[option] = value
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.loaders import validate_source

    from .. import logging_quiet
    from ..params import TrainParams
    from ..train import DEFENSES_AVAILABLE

    if args.defense not in DEFENSES_AVAILABLE:
        raise VetsetError(f"unknown defense {args.defense!r}; available: {', '.join(DEFENSES_AVAILABLE)}")
    curate = args.defense == "curate"
    if not curate and (args.detectors or args.detector_set or args.relabel):
        raise VetsetError("--detectors, --set and --relabel apply to --defense curate only")
    from trainers.defenses import reads_scores

    if args.scores and not reads_scores(args.defense):
        raise VetsetError("--scores applies to --defense curate (rows to drop), pdb (rows never drawn as "
                          "defensive rows) and abl (rows to unlearn) only")
    extra = {}
    if args.detectors:
        extra["detectors"] = [d.strip() for d in args.detectors.split(",") if d.strip()]
    values = dict(data=args.data, out=args.out, test=args.test, model=args.model, preset=args.preset,
                  defense=args.defense, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  device=args.device, seed=args.seed, trigger=args.trigger, tta_flip=args.tta_flip,
                  defense_options=dict(_pairs(args.defense_option, "--defense-option")), scores=args.scores,
                  detector_options=_detector_options(args.detector_set), relabel=args.relabel,
                  baseline_metrics=args.baseline_metrics, processes=args.processes, **extra)
    # one keyword argument: build_params' own first parameter is called ``model``
    params = build_params(lambda values: TrainParams(**values), values=values)
    validate_source(params.data)
    if params.test:
        validate_source(params.test)
    for flag, path in (("--trigger", params.trigger), ("--scores", params.scores),
                       ("--baseline-metrics", params.baseline_metrics)):
        if path and not Path(path).exists():
            raise VetsetError(f"{path}: no such file ({flag})")
    if params.defense_options:
        from trainers.defenses import build_defense

        build_defense(params.defense, params.defense_options)  # unknown options fail here, before any work
    check_model_name(params.model)
    if params.processes > 1:
        from trainers.distributed import check_processes

        if curate:
            raise VetsetError("--processes applies to --defense none, abl and pdb (curate-then-train trains in one process)")
        check_processes(params.processes, params.device)
    logging_quiet.install()
    if curate:
        from ..curate_train import curate_train_flow

        metrics = curate_train_flow(params)
    else:
        from ..train import train_flow

        metrics = train_flow(params)
    for key in ("clean_acc", "asr", "ra", "der"):
        if metrics.get(key) is not None:
            print(f"{key}: {metrics[key]:.4f}")
    print(f"model: {params.out}")
    return 0


COMMANDS.register("train")(Command("train", "train a model (optionally defended) and save it with its metrics",
                                   _arguments, cmd_train))
