"""Poisoning-sample selection (issue 16): random vs FUS vs LPS at low budgets.

For each attack, budget and seed: the rows each strategy picks (``trainers.selection``), the
ASR / CA of an undefended model trained on each poisoned set (same trigger, same seed), then
the default audit's poisoned TPR / FPR on the random and the LPS sets (``--audit``), and
``--defenses`` (abl, pdb, curate) on the LPS set. Prints one JSON line per cell and tables.

CPU (the issue's setting: 6,000-row class-balanced CIFAR-10 slice, the small CNN)::

    python benchmarks/selection.py --data ../shared/data/cifar10 --rows 6000 --attacks badnets,blended \\
        --budgets 0.01 --seeds 0,1,2 --audit --json runs/selection.json

The victim trains with the ``cpu_small`` recipe without random crop (with the crop a 3x3
patch at 1% is barely learned by this model at 10 epochs; docs/benchmarks.md); the surrogate
of LPS / FUS trains the same way (``--surrogate-crop`` turns it on for both).
GPU (``--device cuda``): PreAct-ResNet18 with the fast recipe, the whole train set.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from detectors import load  # noqa: E402  (benchmarks/detectors.py: an evenly spread slice)

from pipelines.simulate import SimulationSpec, simulate  # noqa: E402
from trainers import build_model, evaluate, fit, preset  # noqa: E402
from trainers.selection import simulate_selected  # noqa: E402
from trainers.train import auto_choice, channel_stats  # noqa: E402

SELECTIONS = ("random", "fus", "lps")


def victim_config(device: str, seed: int, crop: bool, epochs: int | None):
    arch, preset_name = auto_choice(device)
    cfg = preset(preset_name, device=device, seed=seed)
    if epochs:
        cfg = cfg.replace(epochs=epochs)
    if not crop:
        cfg.augment = replace(cfg.augment, crop=False)
    return cfg, arch


def train_and_evaluate(sim, test, cfg, arch: str, seed: int) -> dict:
    mean, std = channel_stats(sim.dataset.images)
    model = build_model(arch, sim.dataset.num_classes, sim.dataset.image_size, mean, std, seed=seed)
    t0 = time.perf_counter()
    fit(model, sim.dataset.images, sim.dataset.labels, cfg)
    m = evaluate(model, test, sim.trigger)
    return {"clean_acc": m["clean_acc"], "asr": m["asr"], "train_seconds": time.perf_counter() - t0}


def audit(sim, device: str, seed: int) -> dict:
    import cleansers  # noqa: F401  (registers the detectors)
    from cleansers import DEFAULT_DETECTORS
    from cleansers.audit import run_audit
    from cleansers.base import AuditContext
    from pipelines.outputs import RunPaths

    with tempfile.TemporaryDirectory() as tmp:
        ctx = AuditContext(device=device, seed=seed)
        t0 = time.perf_counter()
        result = run_audit(sim.dataset, list(DEFAULT_DETECTORS), RunPaths(Path(tmp)), run_id="sel", ctx=ctx,
                           truth=sim.truth)
        fused = result.metrics["detection"]["fused"]["poisoned"]
    return {"tpr": fused["tpr"], "fpr": fused["fpr"], "f1": fused["f1"], "seconds": time.perf_counter() - t0,
            "backdoor_classes": result.verdict.backdoor_classes}


def defenses(sim, test, cfg, arch: str, seed: int, names: list[str], device: str) -> dict:
    from trainers.train import train_defended

    out = {}
    for name in names:
        options = {}
        if name == "curate":
            from cleansers import DEFAULT_DETECTORS
            from defenses import curate_scores  # benchmarks/defenses.py

            frame = curate_scores(sim.dataset, list(DEFAULT_DETECTORS), {}, device, seed, 0.1)
            options = {"scores": frame[["sample_id", "flagged"]].copy()}
        model, _ = train_defended(sim.dataset, arch=arch, cfg=cfg, defense=name, defense_options=options, seed=seed,
                                  log=None)
        m = evaluate(model, test, sim.trigger)
        out[name] = {"clean_acc": m["clean_acc"], "asr": m["asr"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", type=Path, default=Path(".device-data/cifar10"))
    p.add_argument("--rows", type=int, default=6000, help="class-balanced train slice (0 = all)")
    p.add_argument("--test-rows", type=int, default=2000)
    p.add_argument("--attacks", default="badnets,blended")
    p.add_argument("--budgets", default="0.005,0.01,0.02", help="poisoning rates (fractions of all rows)")
    p.add_argument("--selections", default=",".join(SELECTIONS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--device", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="victim epochs (default: the recipe's)")
    p.add_argument("--surrogate-crop", action="store_true", help="random crop for victim and surrogate")
    p.add_argument("--lps", action="append", default=[], metavar="OPTION=VALUE", help="an LPS option")
    p.add_argument("--fus", action="append", default=[], metavar="OPTION=VALUE", help="a FUS option")
    p.add_argument("--audit", action="store_true", help="the default audit on the random and LPS sets")
    p.add_argument("--defenses", default="", help="e.g. abl,pdb,curate: trained on the LPS set")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load(args.data, "train", args.rows), load(args.data, "test", args.test_rows)
    options = {"lps": {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.lps)},
               "fus": {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.fus)}}
    rows = []
    for attack in [a for a in args.attacks.split(",") if a]:
        for budget in [float(b) for b in args.budgets.split(",") if b]:
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                cfg, arch = victim_config(args.device, seed, args.surrogate_crop, args.epochs)
                sims = {}
                for sel in [s for s in args.selections.split(",") if s]:
                    params = dict(options.get(sel, {}))
                    if sel != "random":
                        params.setdefault("arch", arch)
                        params.setdefault("crop", bool(args.surrogate_crop))
                    spec = SimulationSpec(attack=attack, poison_rate=budget, target=0, seed=seed, select=sel,
                                          select_params=params if sel != "random" else {})
                    t0 = time.perf_counter()
                    sim = simulate_selected(train, spec, device=args.device) if sel != "random" else simulate(train, spec)
                    select_s = time.perf_counter() - t0
                    sims[sel] = sim
                    row = {"attack": attack, "budget": budget, "seed": seed, "selection": sel,
                           "n_poisoned": sim.counts["n_poisoned"], "select_seconds": round(select_s, 1),
                           **train_and_evaluate(sim, test, cfg, arch, seed)}
                    if args.audit and sel in ("random", "lps"):
                        row["audit"] = audit(sim, args.device, seed)
                    if args.defenses and sel == "lps":
                        row["defenses"] = defenses(sim, test, cfg, arch, seed,
                                                   [d for d in args.defenses.split(",") if d], args.device)
                    rows.append(row)
                    print(json.dumps(row, default=str), flush=True)
    print("\n| attack | budget | selection | seeds | ASR mean (min-max) | CA mean | audit TPR | audit FPR | "
          "selection s |")
    print("|---|---|---|---|---|---|---|---|---|")
    keys = sorted({(r["attack"], r["budget"], r["selection"]) for r in rows},
                  key=lambda k: (k[0], k[1], SELECTIONS.index(k[2]) if k[2] in SELECTIONS else 9))
    for a, b, s in keys:
        group = [r for r in rows if (r["attack"], r["budget"], r["selection"]) == (a, b, s)]
        asr = [r["asr"] for r in group]
        tpr = [r["audit"]["tpr"] for r in group if "audit" in r]
        fpr = [r["audit"]["fpr"] for r in group if "audit" in r]
        print(f"| {a} | {b:g} | {s} | {len(group)} | {np.mean(asr):.3f} ({min(asr):.3f}-{max(asr):.3f}) | "
              f"{np.mean([r['clean_acc'] for r in group]):.3f} | "
              f"{f'{np.mean(tpr):.3f}' if tpr else '-'} | {f'{np.mean(fpr):.4f}' if fpr else '-'} | "
              f"{np.mean([r['select_seconds'] for r in group]):.0f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
