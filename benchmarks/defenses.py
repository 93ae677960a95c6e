"""In-training defenses against backdoors: CA / ASR / RA (and DER against the undefended run)
for ``none``, ``abl``, ``pdb`` and ``curate`` on simulated attacks.

GPU machine (the issue's measurement; PreAct-ResNet18, full CIFAR-10, 10% poisoning):

    python benchmarks/defenses.py                      # data: .device-data/cifar10

CPU here (small CNN, a class-balanced slice, BadNets 3x3 patch on 5% of the rows):

    python benchmarks/defenses.py --data ../shared/data/cifar10 --cpu-slice 6000 \\
        --attacks badnets --poison-rate 0.05

``--defenses`` also takes ``abl+audit`` and ``pdb+audit``: the defense given the audit's
scores table (ABL unlearns the flagged rows; PDB never draws them as defensive rows). The
audit runs once per attack; its time is counted in every row that used it.

No Prefect: curate runs the plain audit steps (``cleansers.audit.run_audit``) and then
``trainers.defenses``' curate defense. Prints a Markdown table beside BackdoorBench's rows
(measured on the lossless CIFAR-10; the shared copy is JPEG) and, with ``--json PATH``,
writes the raw numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.bench_tables import PUBLISHED_DEFENSES  # noqa: E402
from pipelines.dataset import ImageDataset  # noqa: E402
from pipelines.loaders import load_dataset  # noqa: E402
from pipelines.simulate import SimulationSpec, simulate  # noqa: E402
from trainers import der, evaluate, preset, resolve_device  # noqa: E402
from trainers.train import train_defended  # noqa: E402

# specs/defenses.md, BackdoorBench leaderboard (CIFAR-10, PreAct-ResNet18, 10%): CA / ASR; kept
# with `vetset bench`'s tables (curate: AGPD's retraining on its filtered data)
PUBLISHED = PUBLISHED_DEFENSES


def balanced_slice(path: Path, n: int | None, offset: int = 0) -> ImageDataset:
    """``n`` evenly spaced rows of a Parquet file (class-balanced when it is sorted by label),
    or the whole file."""
    if not n:
        return load_dataset(path)
    table = pq.read_table(path)
    step = max(1, table.num_rows // n)
    idx = np.arange(min(n, table.num_rows)) * step + offset % step
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        pq.write_table(table.take(pa.array(idx)), out)
        return load_dataset(out)


def curate_scores(ds: ImageDataset, detectors: list[str], options: dict, device: str, seed: int,
                  expected_dirty_rate: float):
    import cleansers  # noqa: F401  (registers the detectors)
    from cleansers.audit import run_audit
    from cleansers.base import AuditContext
    from pipelines.outputs import RunPaths

    with tempfile.TemporaryDirectory() as tmp:
        ctx = AuditContext(device=device, seed=seed, expected_dirty_rate=expected_dirty_rate)
        result = run_audit(ds, detectors, RunPaths(Path(tmp)), run_id="bench", ctx=ctx, options=options)
        return result.frame


def parse_options(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        name, _, option = key.partition(".")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(name, {})[option] = parsed
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=".device-data/cifar10", help="folder with train.parquet and test.parquet")
    p.add_argument("--attacks", default="badnets,blended,sig,wanet")
    p.add_argument("--defenses", default="none,abl,pdb,curate")
    p.add_argument("--poison-rate", type=float, default=0.1)
    p.add_argument("--cpu-slice", type=int, help="train on this many class-balanced rows, on the CPU, small CNN")
    p.add_argument("--test-slice", type=int, help="test rows (default: all; 2000 with --cpu-slice)")
    p.add_argument("--model", default="auto")
    p.add_argument("--preset", default="auto")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defense-set", action="append", default=[], metavar="DEFENSE.OPTION=VALUE",
                   help="e.g. abl.isolation_epochs=10; repeatable")
    p.add_argument("--detectors", default="", help="curate: the audit's detectors (default: cleansers.DEFAULT_DETECTORS)")
    p.add_argument("--set", dest="detector_set", action="append", default=[], metavar="DETECTOR.OPTION=VALUE")
    p.add_argument("--json", help="write the raw numbers here")
    args = p.parse_args(argv)

    device = "cpu" if args.cpu_slice else args.device
    on_cuda = resolve_device(device).type == "cuda"
    model = args.model if args.model != "auto" else ("preact_resnet18" if on_cuda else "small_cnn")
    preset_name = args.preset if args.preset != "auto" else ("fast" if on_cuda else "cpu_small")
    cfg = preset(preset_name, device=device, seed=args.seed)
    if args.epochs:
        cfg = cfg.replace(epochs=args.epochs)
    if on_cuda:
        cfg = cfg.replace(compile=True)
    data = Path(args.data)
    test_n = args.test_slice or (2000 if args.cpu_slice else None)
    train_clean = balanced_slice(data / "train.parquet", args.cpu_slice)
    test = balanced_slice(data / "test.parquet", test_n)
    defense_options = parse_options(args.defense_set)
    detector_options = parse_options(args.detector_set)
    if not args.detectors:
        from cleansers import DEFAULT_DETECTORS
        args.detectors = ",".join(DEFAULT_DETECTORS)
    detectors = [d for d in args.detectors.split(",") if d]
    print(f"device {resolve_device(device)}, model {model}, preset {preset_name} ({cfg.epochs} epochs), "
          f"train {len(train_clean)} rows, test {len(test)} rows, poison rate {args.poison_rate}", flush=True)

    rows = []
    for attack in [a for a in args.attacks.split(",") if a]:
        sim = simulate(train_clean, SimulationSpec(attack=attack, poison_rate=args.poison_rate, seed=args.seed))
        undefended = None
        audit_cache: dict = {}
        for name in [d for d in args.defenses.split(",") if d]:
            # "abl+audit" / "pdb+audit": the defense given the audit's scores table (abl unlearns
            # its flagged rows, pdb never draws them as defensive rows); curate always reads it
            defense, _, plus = name.partition("+")
            options = dict(defense_options.get(defense, {}))
            t0 = time.perf_counter()
            audit_seconds, reused = 0.0, False
            if defense == "curate" or plus == "audit":
                reused = "frame" in audit_cache
                if not reused:
                    audit_cache["frame"] = curate_scores(sim.dataset, detectors, detector_options, device, args.seed,
                                                         args.poison_rate)
                    audit_cache["seconds"] = time.perf_counter() - t0
                audit_seconds = audit_cache["seconds"]
                options["scores"] = audit_cache["frame"]
            model_out, info = train_defended(sim.dataset, arch=model, cfg=cfg, defense=defense,
                                             defense_options=options, seed=args.seed, log=None)
            seconds = time.perf_counter() - t0 + (audit_seconds if reused else 0.0)
            r = evaluate(model_out, test, sim.trigger, batch_size=cfg.eval_batch_size)
            row = {"attack": attack, "defense": name, "ca": r["clean_acc"], "asr": r["asr"], "ra": r["ra"],
                   "seconds": seconds, "train_seconds": info["train_seconds"], "audit_seconds": audit_seconds,
                   "n_train": info["n_train"],
                   "notes": {k: info[k] for k in ("n_isolated", "unlearn_epochs_run", "n_defensive",
                                                  "n_excluded_from_defensive") if k in info}}
            if "curation" in info:
                cur = info["curation"]
                poisoned_ids = set(sim.truth.loc[sim.truth["is_poisoned"], "sample_id"].astype(str))
                dropped = set(cur["dropped_ids"])
                row["notes"].update(n_dropped=cur["n_dropped"], poisoned_dropped=len(dropped & poisoned_ids),
                                    poisoned=len(poisoned_ids))
            if name == "none":
                undefended = row
            elif undefended is not None:
                row["der"] = der(row["ca"], row["asr"], undefended["ca"], undefended["asr"])
            rows.append(row)
            print(f"{attack:8s} {name:7s} CA {100 * row['ca']:6.2f} ASR {100 * row['asr']:6.2f} "
                  f"RA {100 * row['ra']:6.2f} {seconds:7.1f}s {row['notes']}", flush=True)
            del model_out
            if on_cuda:
                torch.cuda.empty_cache()

    print()
    print("| attack | defense | CA | ASR | RA | DER | seconds (train + audit) | BackdoorBench CA/ASR |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        pub = PUBLISHED.get(row["defense"], {}).get(row["attack"])
        pub_text = f"{pub[0]:.2f}/{pub[1]:.2f}" if pub else "-"
        der_text = f"{row['der']:.3f}" if "der" in row else "-"
        print(f"| {row['attack']} | {row['defense']} | {100 * row['ca']:.2f} | {100 * row['asr']:.2f} | "
              f"{100 * row['ra']:.2f} | {der_text} | {row['seconds']:.0f} | {pub_text} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
