"""What AGPD loses without a trusted clean set: the same audit, the same detection model, with
each choice of clean reference (issue 4: "decide and document what happens without one ...
with the cost of that choice measured").

AGPD needs a few clean rows per class (g0, the class's mean clean gradient). Variants:

- ``trusted``: ``--trusted-per-class`` rows per class the audit never sees (CIFAR-10: the test
  split; digits: held out from the audited rows), the published setting;
- ``auto`` (our default without a trusted set): per class, the correctly classified rows
  nearest the class's 0.25 quantile of confidence (``agpd.ref_quantile=0.25``);
- ``most_confident``: the class's most confidently classified rows (``ref_quantile=1.0``), the
  obvious choice, which in a poisoned target class picks triggered rows first;
- ``median``: the 0.5 quantile.

The detection model is trained once per seed and shared by the variants (one AuditContext),
so the seconds are AGPD's own. Prints one Markdown table; ``--json`` keeps the raw numbers.

CPU, digits (the setting AGPD's tests use: 16x16, 10% BadNets to class 0, small CNN 6 epochs):

    python benchmarks/agpd_reference.py --data embedded:digits --seeds 0,1,2

CPU, 6,000-row CIFAR-10 slice, 5% BadNets:

    python benchmarks/agpd_reference.py --data ../shared/data/cifar10 --rows 6000 --poison-rate 0.05

GPU machine (full CIFAR-10, PreAct-ResNet18 picked on CUDA):

    python benchmarks/agpd_reference.py --data .device-data/cifar10 --device cuda --seeds 0
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cleansers  # noqa: E402,F401  (registers the detectors)
from cleansers.base import AuditContext  # noqa: E402
from cleansers.run import run_detector  # noqa: E402
from pipelines.metrics import detection_metrics  # noqa: E402
from pipelines.simulate import SimulationSpec, simulate  # noqa: E402

VARIANTS = {
    "trusted": {"use_trusted": True},
    "auto": {"use_trusted": False, "ref_quantile": 0.25},
    "median": {"use_trusted": False, "ref_quantile": 0.5},
    "most_confident": {"use_trusted": False, "ref_quantile": 1.0},
}


def audited_and_trusted(data: str, rows: int, per_class: int):
    """(rows to audit, trusted rows the audit never sees)."""
    if data == "embedded:digits":
        from pipelines.embedded import load_digits_rgb

        ds = load_digits_rgb(size=16)
        held = np.concatenate([np.flatnonzero(ds.labels == c)[:per_class] for c in range(ds.num_classes)])
        rest = np.setdiff1d(np.arange(len(ds)), held)
        return ds.subset(rest), ds.subset(np.sort(held))
    from detectors import load, trusted_set  # benchmarks/detectors.py

    folder = Path(data)
    return load(folder, "train", rows), trusted_set(folder, per_class)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="embedded:digits, or a folder with train.parquet and test.parquet")
    p.add_argument("--rows", type=int, default=0, help="class-balanced slice of train.parquet (0 = all)")
    p.add_argument("--attack", default="badnets")
    p.add_argument("--poison-rate", type=float, default=0.1)
    p.add_argument("--trusted-per-class", type=int, default=10)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0", help="comma-separated; each trains its own detection model")
    p.add_argument("--epochs", type=int, default=None, help="detection model epochs (default: AGPD's; digits: 6)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    audited, trusted = audited_and_trusted(args.data, args.rows, args.trusted_per_class)
    epochs = args.epochs or (6 if args.data == "embedded:digits" else None)
    variants = [v for v in args.variants.split(",") if v]
    print(f"{len(audited)} rows audited, {len(trusted)} trusted rows; {args.attack} at {args.poison_rate}", flush=True)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        sim = simulate(audited, SimulationSpec(attack=args.attack, poison_rate=args.poison_rate, target=0, seed=seed))
        poisoned = sim.truth["is_poisoned"].to_numpy()
        ctx = AuditContext(device=args.device, seed=seed, trusted=trusted, expected_dirty_rate=args.poison_rate)
        for variant in variants:
            opts = dict(VARIANTS[variant])
            if epochs:
                opts["epochs"] = epochs
            t0 = time.perf_counter()
            r = run_detector("agpd", sim.dataset, ctx, opts)
            seconds = time.perf_counter() - t0
            m = detection_metrics(poisoned, r.flag, r.score)
            rows.append({"seed": seed, "variant": variant, "targets": r.info.get("target_class_ids"),
                         "max_z": r.info.get("max_z"), "reference": r.info.get("reference"),
                         "tpr": m["tpr"], "fpr": m["fpr"], "f1": m["f1"], "auroc": m["auroc"],
                         "seconds": seconds, "model_trained_now": r.info.get("model", {}).get("trained_now")})
            print(json.dumps(rows[-1], default=str), flush=True)

    print("\n| seed | reference | target classes | max z | TPR % | FPR % | F1 % | AUROC | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        z = "-" if r["max_z"] is None else f"{r['max_z']:.2f}"
        print(f"| {r['seed']} | {r['variant']} | {r['targets']} | {z} | {100 * r['tpr']:.2f} | {100 * r['fpr']:.2f} | "
              f"{100 * r['f1']:.2f} | {r['auroc']:.4f} | {r['seconds']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
