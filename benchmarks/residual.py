"""Does the trigger-free residual-backdoor estimate (trainers/purify/residual.py) agree with
the true ASR? For each attack and seed: train a model on poisoned data, estimate before, run
each purification method, estimate after, and hold every estimate against the ASR measured
with the attack's own trigger: "still backdoored" should be said when ASR > 20% and "none"
when ASR < 5% (ASR in between is not scored). A clean model (no attack) is scored too.

Digits (default; the small CNN, 8 epochs, 200 clean rows, 300 test rows; ~1 min a cell on one
thread):

    python benchmarks/residual.py --threads 1 --out /tmp/residual_digits.json

CIFAR-10 slice (--data DIR with train.parquet and test.parquet, --rows N; 500 clean rows,
2,000 test rows, the small CNN without crop / flip for 10 epochs as benchmarks/purify.py):

    python benchmarks/residual.py --data ../shared/data/cifar10 --rows 6000 --threads 1
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.simulate import SimulationSpec, simulate  # noqa: E402
from trainers import build_model, evaluate, fit, preset  # noqa: E402
from trainers.purify import purify  # noqa: E402
from trainers.purify.residual import ResidualConfig, residual_estimate  # noqa: E402
from trainers.purify.run import balanced_subset  # noqa: E402
from trainers.train import channel_stats  # noqa: E402

# short schedules that fit a CPU minute on digits (the test file's), or the purify benchmark's
DIGITS_OPTIONS = {
    "ft": {"epochs": 2},
    "nc": {"reverse_epochs": 30, "reverse_rows": 50, "reverse_batch_size": 10, "epochs": 6},
    "npd": {"warmup_epochs": 0, "epochs": 10, "batch_size": 25},
    "sau": {"epochs": 10, "lr": 3e-4},
    "ftsam": {"epochs": 8},
    "tsbd": {"unlearn_lr": 1e-3, "unlearn_max_epochs": 60, "epochs": 12, "sweep": [0.3]},
}


def agreement(asr: float | None, evidence: bool) -> str:
    if asr is None:
        return "clean model: " + ("wrong" if evidence else "right")
    if asr > 0.2:
        return "right" if evidence else "wrong"
    if asr < 0.05:
        return "wrong" if evidence else "right"
    return "n/a"


def run_auto(model, clean, test, trigger, options, rcfg, seed):
    """``--method auto`` as the CLI runs it: benchmarks/purify.py's ``run_auto`` on this
    script's small CNN (width 12)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from purify import run_auto as auto  # benchmarks/purify.py

    # the published profile under the given schedules, as they were measured (tests/test_purify.py's)
    return auto(model, "small_cnn", clean, test, trigger, options, rcfg, "cpu", seed, arch_kwargs={"width": 12},
                profile="published")[0]


def load_data(args):
    if args.data is None:
        from pipelines.embedded import load_digits_rgb

        ds = load_digits_rgb()
        perm = np.random.default_rng(0).permutation(len(ds))
        return ds.subset(perm[500:]), ds.subset(perm[:300]), ds.subset(perm[300:500]), DIGITS_OPTIONS, 8
    from pipelines.loaders import load_dataset

    train = load_dataset(Path(args.data) / "train.parquet")
    test = load_dataset(Path(args.data) / "test.parquet")
    from pipelines.slices import spread_indices

    picks = spread_indices(len(train), args.rows)
    pool = train.subset(picks)
    rest = np.setdiff1d(np.arange(len(train)), picks)
    clean = balanced_subset(train.subset(rest), 500, 0)
    test = test.subset(np.arange(0, len(test), max(1, len(test) // 2000)))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from purify import CPU_OPTIONS  # benchmarks/purify.py's CPU schedules

    return pool, test, clean, CPU_OPTIONS, 10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="folder with train.parquet / test.parquet (default: digits)")
    p.add_argument("--rows", type=int, default=6000)
    p.add_argument("--attacks", default="none,badnets,patch,blended,sig")
    p.add_argument("--methods", default="ft,nc,npd,sau")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--residual-rows", type=int, default=ResidualConfig.rows)
    p.add_argument("--residual-steps", type=int, default=ResidualConfig.steps_per_class)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    train, test, clean, options, epochs = load_data(args)
    rcfg = ResidualConfig(rows=args.residual_rows, steps_per_class=args.residual_steps)
    # every estimate here also runs the fresh reversal (reversal_evidence, scored on its own);
    # auto runs as the CLI does, with rcfg
    rcfg_full = dataclasses.replace(rcfg, fresh_reversal_after=True)
    results = []
    header = (f"{'attack':9} {'seed':>4} {'model':7} {'CA':>6} {'ASR':>6} {'evidence':>8} {'gap':>5} {'transfer':>8} "
              f"{'s':>5}  agrees")
    print(header, flush=True)

    def record(attack, seed, name, model, trigger, reference=None):
        ev = evaluate(model, test, trigger)
        est = residual_estimate(model, clean, rcfg_full, device="cpu", seed=seed, reference=reference)
        asr = ev.get("asr") if trigger is not None else None
        row = {"attack": attack, "seed": seed, "model": name, "clean_acc": ev["clean_acc"], "asr": asr,
               "evidence": est["evidence"], "class": est["class"], "gap": est["smallest_to_median_l1"], "to_next": est["smallest_to_next_l1"],
               "anomaly_index": est["anomaly_index"], "seconds": est["seconds"], "mask_l1": est["mask_l1"],
               "reversal_evidence": est["reversal_evidence"], "transfer_rate": est["transfer_rate"],
            "transfer_decides": est["transfer_decides"], "smallest_class": est["smallest_class"],
               "agrees": agreement(asr, est["evidence"]),
               "agrees_reversal_only": agreement(asr, est["reversal_evidence"])}
        results.append(row)
        tr = "-" if est["transfer_rate"] is None else f"{est['transfer_rate']:.2f}"
        print(f"{attack:9} {seed:>4} {name:7} {ev['clean_acc']:6.3f} {'-' if asr is None else f'{asr:6.3f}':>6} "
              f"{str(est['evidence']):>8} {row['gap']:5.2f} {tr:>8} {est['seconds']:5.0f}  {row['agrees']}", flush=True)
        return est

    for seed in [int(s) for s in args.seeds.split(",")]:
        for attack in args.attacks.split(","):
            if attack == "none":
                data, trigger = train, None
            else:
                sim = simulate(train, SimulationSpec(attack=attack, poison_rate=args.rate, seed=seed))
                data, trigger = sim.dataset, sim.trigger
            mean, std = channel_stats(data.images)
            model = build_model("small_cnn", data.num_classes, data.image_size, mean, std, seed=seed, width=12)
            fit(model, data.images, data.labels, preset("cpu_small", epochs=epochs, device="cpu", seed=seed,
                                                        augment={"crop": False, "flip": False}))
            before = record(attack, seed, "input", model, trigger)
            if trigger is None:
                continue
            for method in args.methods.split(","):
                if method == "auto":
                    from pipelines.errors import VetsetError

                    try:
                        purified = run_auto(model, clean, test, trigger, options, rcfg, seed)
                    except VetsetError as exc:  # every step broke the clean-accuracy rule: refused
                        print(f"    auto refused: {exc}", flush=True)
                        results.append({"attack": attack, "seed": seed, "model": "auto", "refused": str(exc),
                                        "agrees": "n/a"})
                        continue
                else:
                    purified, _ = purify(method, copy.deepcopy(model), clean, dict(options.get(method, {})),
                                         device="cpu", seed=seed)
                record(attack, seed, method, purified, trigger, reference=before)
    scored = [r for r in results if r["agrees"] in ("right", "wrong") or r["agrees"].startswith("clean")]
    right = sum(r["agrees"].endswith("right") for r in scored)
    print(f"\nagreement: {right} of {len(scored)} scored models (ASR between 5% and 20%: not scored, "
          f"{len(results) - len(scored)})")
    only = [r for r in results if r.get("agrees_reversal_only", "n/a") in ("right", "wrong")
            or r.get("agrees_reversal_only", "").startswith("clean")]
    print(f"the reversal alone (no transfer of the input model's trigger): "
          f"{sum(r['agrees_reversal_only'].endswith('right') for r in only)} of {len(only)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results, "time": time.time()}, indent=1))


if __name__ == "__main__":
    main()
