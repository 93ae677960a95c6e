"""`vetset purify`: repair a trained model with a small clean set (trainers.purify)."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command
from .common import build_params, parse_value


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="vetset model directory")
    p.add_argument("--arch", help="architecture of --state-dict (small_cnn, preact_resnet18, ...)")
    p.add_argument("--state-dict", help=".safetensors or torch state dict that fits --arch")
    p.add_argument("--clean", required=True, help="the small clean set")
    p.add_argument("--method", required=True,
                   help="sau, npd, ftsam, tsbd, awm, ft, fp, nc, strip, or auto (nc, npd, tsbd, ftsam, sau in turn until the "
                        "residual estimate finds no backdoor; npd only with a class from --audit or the estimate; "
                        "--set sequence=... and --set tsbd.steps=...)")
    p.add_argument("--test", help="test set for CA (and ASR / RA / DER with --trigger)")
    p.add_argument("--trigger", help="trigger.json written by `vetset poison`")
    p.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                   help="method option, e.g. --set epochs=5 (repeatable); `vetset purifiers` lists them with their defaults")
    p.add_argument("--n-clean", type=int, help="use a class-balanced subset of this many clean rows")
    p.add_argument("--device", default="auto")
    p.add_argument("--profile", choices=("auto", "cpu", "published"), default="auto",
                   help="the methods' schedules: published (the papers' GPU defaults), cpu (optimizer steps that fit "
                        "~5 minutes on 2 cores for 500 clean rows), auto (cpu on a CPU device); --set overrides either")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audit", metavar="RUN_DIR",
                   help="`vetset audit`'s run folder (or its verdict.json) for the data the model was trained on: the "
                        "class it named is the backdoor's target that NPD's and SAU's attacks aim at (on the CPU "
                        "profile; else the residual estimate's class), and for a dirty-label class the share of its "
                        "injected rows the model still puts there is reported before and after")
    p.add_argument("--out", required=True, help="model directory to write")
    g = p.add_argument_group("checks")
    g.add_argument("--min-rows-per-class", type=int, default=5, help="least readable clean rows of each class (5)")
    g.add_argument("--allow-missing-classes", action="store_true",
                   help="go on when the clean set lacks some of the model's classes")
    g.add_argument("--holdout", type=float, default=0.1,
                   help="share of the clean set kept out to measure clean accuracy before and after (0.1)")
    g.add_argument("--max-ca-drop", type=float, default=0.10,
                   help="refuse to save when the held-out clean accuracy falls by more than this plus one standard "
                        "error of the paired drop on the held-out rows (0.10; 50 held-out rows add ~0.05-0.07)")
    g.add_argument("--force", action="store_true", help="save even when the clean accuracy collapsed")
    g.add_argument("--no-residual", action="store_true",
                   help="skip the trigger-free residual-backdoor estimate before and after (Neural Cleanse's "
                        "reversal per class; --method auto needs it)")
    g.add_argument("--residual-rows", type=int, default=200,
                   help="class-balanced clean rows the residual estimate reverses triggers on (200)")
    g.add_argument("--residual-steps", type=int, default=300,
                   help="Adam steps per class of the residual estimate's trigger reversal (300)")


def _options(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise VetsetError(f"--set wants OPTION=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value)
    return out


def cmd_purify(args: argparse.Namespace) -> int:
    from pipelines.loaders import load_dataset, validate_source
    from trainers.purify import PURIFIERS, make_config
    from trainers.purify.run import load_user_model

    from .. import logging_quiet
    from ..purify import purify_flow
    from ..purify_params import PurifyParams

    params = build_params(PurifyParams, model=args.model, arch=args.arch, state_dict=args.state_dict,
                          clean=args.clean, method=args.method, out=args.out, test=args.test, trigger=args.trigger,
                          options=_options(args.set), n_clean=args.n_clean, device=args.device,
                          profile=args.profile, seed=args.seed,
                          min_rows_per_class=args.min_rows_per_class, allow_missing_classes=args.allow_missing_classes,
                          holdout=args.holdout, max_ca_drop=args.max_ca_drop, force=args.force,
                          residual=not args.no_residual, residual_rows=args.residual_rows,
                          residual_steps=args.residual_steps, audit=args.audit)
    if params.method == "auto":
        from trainers.purify.run import auto_config

        auto_config(params.options)
        if not params.residual:
            raise VetsetError("--method auto stops on the residual-backdoor estimate; drop --no-residual")
    else:
        PURIFIERS.get(params.method)
        make_config(params.method, params.options)
    validate_source(params.clean)
    if params.test:
        validate_source(params.test)
    if params.trigger and not Path(params.trigger).is_file():
        raise VetsetError(f"{params.trigger}: no such trigger file")
    clean = load_dataset(params.clean)
    if len(clean) == 0 or not (~clean.unreadable).any():
        raise VetsetError("the clean set is empty")
    model, meta = load_user_model(params.model, arch=params.arch, state_dict=params.state_dict,
                                  num_classes=clean.num_classes, input_size=clean.image_size)
    if int(meta["num_classes"]) != clean.num_classes:
        raise VetsetError(f"the model has {meta['num_classes']} classes, the clean set {clean.num_classes}")
    if tuple(meta["input_size"]) != tuple(clean.image_size):
        raise VetsetError(f"the model takes {tuple(meta['input_size'])} images, the clean set has {clean.image_size}")
    from trainers.purify.run import balanced_subset, check_clean_set

    check_clean_set(balanced_subset(clean, params.n_clean, params.seed) if params.n_clean else clean,
                    int(meta["num_classes"]), min_rows_per_class=params.min_rows_per_class,
                    allow_missing_classes=params.allow_missing_classes)
    from trainers.purify.run import audit_target

    audit_target(params.audit, meta["class_names"] or clean.class_names)  # a bad verdict fails here, not mid-run
    del model
    logging_quiet.install()
    metrics = purify_flow(params)
    for key in ("clean_acc", "asr", "ra", "der", "strip_frr", "strip_far"):
        if metrics.get(key) is not None:
            print(f"{key}: {metrics[key]:.4f}")
    if metrics.get("residual"):
        print(metrics["residual"]["summary"])
        if metrics["residual"]["warning"]:
            print(f"WARNING: {metrics['residual']['warning']}")
    rows = metrics.get("audit_rows")
    if rows:
        print(rows.get("summary") or f"the audit's rows: {rows.get('note')}")
        if rows.get("warning"):
            print(f"WARNING: {rows['warning']}")
    if metrics.get("purification", {}).get("chosen"):
        print(f"auto kept: {metrics['purification']['chosen']}")
    if "backdoor_detected" in metrics:
        print(f"backdoor_detected: {metrics['backdoor_detected']} target_class: {metrics['target_class']}")
    print(f"model: {params.out}")
    return 0


COMMANDS.register("purify")(Command("purify", "repair a trained model with a small clean set", _arguments,
                                    cmd_purify))
