"""`vetset train`: train a (defended) model and save it in the model-directory contract."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command
from .common import build_params


def _arguments(t: argparse.ArgumentParser) -> None:
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


def check_model_name(name: str) -> None:
    from trainers.models import MODELS

    if name == "auto" or ":" in name:
        return
    MODELS.get(name)  # raises a one-line VetsetError naming the known models


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.loaders import validate_source

    from .. import logging_quiet
    from ..params import TrainParams
    from ..train import DEFENSES_AVAILABLE, train_flow

    if args.defense not in DEFENSES_AVAILABLE:
        raise VetsetError(f"unknown defense {args.defense!r}; available: {', '.join(DEFENSES_AVAILABLE)}")
    params = build_params(TrainParams, data=args.data, out=args.out, test=args.test, model=args.model,
                          preset=args.preset, defense=args.defense, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, device=args.device, seed=args.seed, trigger=args.trigger, tta_flip=args.tta_flip)
    validate_source(params.data)
    if params.test:
        validate_source(params.test)
    if params.trigger and not Path(params.trigger).exists():
        raise VetsetError(f"{params.trigger}: no such trigger file")
    check_model_name(params.model)
    logging_quiet.install()
    metrics = train_flow(params)
    for key in ("clean_acc", "asr", "ra"):
        if metrics.get(key) is not None:
            print(f"{key}: {metrics[key]:.4f}")
    print(f"model: {params.out}")
    return 0


COMMANDS.register("train")(Command("train", "train a model (optionally defended) and save it with its metrics",
                                   _arguments, cmd_train))
