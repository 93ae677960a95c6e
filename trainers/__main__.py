"""``python -m trainers train|eval ...`` (works without Prefect installed).

    python -m trainers train --data PATH [--test PATH] [--model NAME] [--preset NAME]
        [--epochs N] [--batch-size N] [--lr LR] [--device DEV] [--seed N] [--compile]
        [--trigger trigger.json] [--defense none|abl|pdb|curate] [--scores scores.parquet]
        [--relabel] [--defense-option KEY=VALUE ...] [--baseline-metrics metrics.json] --out DIR
    python -m trainers eval --model-dir DIR --test PATH [--trigger trigger.json] [--device DEV]

Bad input prints ``error: <one line>`` to stderr and exits 2.
"""
from __future__ import annotations

import argparse
import json
import sys

from pipelines.errors import VetsetError
from trainers.distributed import is_main_process, world_size


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainers", description="Train and evaluate vetset models.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model on a dataset and save it with its metrics")
    t.add_argument("--data", required=True, help="training dataset (Parquet, HF saved dataset, image folder...)")
    t.add_argument("--test", help="test dataset for CA / per-class accuracy (and ASR/RA with --trigger)")
    t.add_argument("--model", default="auto",
                   help="small_cnn, preact_resnet18, torchvision:<name>, timm:<name>; auto = "
                        "preact_resnet18 on CUDA, small_cnn on CPU")
    t.add_argument("--preset", default="auto", help="fast, backdoorbench, cpu_small; auto = fast on CUDA, cpu_small on CPU")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (CUDA)")
    t.add_argument("--trigger", help="trigger.json of the attack, to measure ASR and RA")
    t.add_argument("--pretrained", help="local weights file (.safetensors or .pt state dict)")
    t.add_argument("--tta-flip", action="store_true", help="average logits with the mirrored image at test time")
    t.add_argument("--defense", default="none", help="in-training defense: none, abl, pdb, curate")
    t.add_argument("--scores", help="curate: the audit's scores.parquet (flagged rows are dropped); "
                                    "pdb: its flagged rows are never drawn as defensive rows; "
                                    "abl: its flagged rows are the ones unlearned")
    t.add_argument("--relabel", action="store_true",
                   help="curate: give flagged rows their suggested label instead of dropping them")
    t.add_argument("--defense-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a defense option, e.g. isolation_epochs=10 (abl) or repeats=3 (pdb); repeatable")
    t.add_argument("--baseline-metrics", help="an undefended run's metrics.json, for DER")
    t.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, metrics.json)")
    t.add_argument("--processes", type=int, default=1,
                   help="train in N processes on this machine through accelerate (one GPU each, or CPU "
                        "processes); --batch-size is the global batch")
    t.add_argument("--monitor-rows", type=int, default=1000,
                   help="test rows for each epoch's CA / ASR in the history (0 = none)")
    e = sub.add_parser("eval", help="evaluate a saved model")
    e.add_argument("--model-dir", required=True)
    e.add_argument("--test", required=True)
    e.add_argument("--trigger")
    e.add_argument("--device", default="auto")
    e.add_argument("--tta-flip", action="store_true")
    return p


def _summary(metrics: dict) -> str:
    parts = []
    for key in ("clean_acc", "asr", "ra", "der"):
        if key in metrics and metrics[key] is not None:
            parts.append(f"{key} {metrics[key]:.4f}")
    if "train_seconds" in metrics:
        parts.append(f"train {metrics['train_seconds']:.1f}s ({metrics['sec_per_epoch']:.2f}s/epoch)")
    return ", ".join(parts)


def defense_options(args: argparse.Namespace) -> dict:
    """--defense-option KEY=VALUE pairs (values parsed as JSON when they parse) plus --scores
    and --relabel for curate."""
    from .defenses import DEFENSES, reads_scores

    DEFENSES.get(args.defense)  # one-line error naming the known defenses
    options: dict = {}
    for item in args.defense_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise VetsetError(f"--defense-option wants KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    if args.defense == "curate":
        if not args.scores:
            raise VetsetError("--defense curate needs --scores PATH (an audit's scores.parquet)")
        options.update(scores=args.scores, relabel=bool(args.relabel))
    elif args.scores and not args.relabel and reads_scores(args.defense):
        options.update(scores=args.scores)  # pdb: never defensive rows; abl: the rows unlearned
    elif args.scores or args.relabel:
        raise VetsetError("--scores applies to --defense curate, pdb and abl, --relabel to curate only")
    return options


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "train":
            from .train import train_and_save

            metrics = train_and_save(
                args.data, args.out, test=args.test, model=args.model, preset=args.preset,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
                seed=args.seed, compile=args.compile, trigger=args.trigger, pretrained=args.pretrained,
                tta_flip=args.tta_flip, log=lambda line: print(line, flush=True), defense=args.defense,
                defense_options=defense_options(args), baseline_metrics=args.baseline_metrics,
                monitor_rows=args.monitor_rows, processes=args.processes)
            if is_main_process() and not (args.processes > 1 and world_size() == 1):
                print(f"saved to {args.out}: {_summary(metrics)}")  # (with --processes, rank 0 said it)
        else:
            from pipelines.loaders import load_dataset

            from .evaluate import evaluate
            from .loop import resolve_device
            from .saved import load_model

            model = load_model(args.model_dir, device=resolve_device(args.device))
            metrics = evaluate(model, load_dataset(args.test), args.trigger, tta_flip=args.tta_flip)
            print(json.dumps(metrics, indent=2))
    except VetsetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
