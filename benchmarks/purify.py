"""Post-training purification benchmark: CA / ASR before and after every method.

GPU (the issue's setting; no Prefect needed): CIFAR-10 from ``--data`` (default
.device-data/cifar10, train.parquet + test.parquet), PreAct-ResNet18 trained with the fast
recipe on 10% poisoned data per attack, a clean set of 5% of the training size taken from
rows the simulator left clean, each method at its published defaults; AWM also with 1% and
with 10 images; STRIP's false acceptance at 1% false rejection.

    python benchmarks/purify.py --device cuda --out purify_gpu.json

CPU (``--cpu-slice 6000``): a class-balanced 6,000-row slice, BadNets (the default 3x3
white patch, bottom-right) on 5% of it, the small CNN with the cpu_small recipe but WITHOUT
random crop and flip (with the crop the 3x3 patch moves around and 10 epochs barely learn
it: ASR ~0.16; without it CA 0.64 / ASR 0.87), 2,000 test rows, and the methods with the
short schedules in CPU_OPTIONS (printed and recorded). The purification methods keep their
own augmentation settings. ``--threads 1`` pins torch to one thread:

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/purify.py --data ../shared/data/cifar10 \
        --cpu-slice 6000 --device cpu --threads 1 --out /tmp/purify_cpu.json

``--audit`` runs the default audit on each poisoned training set first (as a user runs
``vetset audit`` before ``vetset purify --audit RUN``; the simulation's truth only scores it)
and gives its run folder to every method: the class it names is NPD's and SAU's target, and
``--method auto`` runs its class-aimed step (NPD) and checks each step against the audit's
flagged rows. docs/benchmarks.md, "`--method auto` with the audit", has the command.
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.dataset import row_digests  # noqa: E402
from pipelines.loaders import load_dataset  # noqa: E402
from pipelines.simulate import SimulationSpec, simulate  # noqa: E402
from trainers import build_model, evaluate, fit, preset, resolve_device  # noqa: E402
from trainers.purify import PURIFIERS, purify  # noqa: E402
from trainers.purify.base import make_config, profile_options  # noqa: E402
from trainers.purify.run import audit_target, balanced_subset, resolve_estimated_target, strip_rates  # noqa: E402
from trainers.train import channel_stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from residual import agreement  # noqa: E402  (benchmarks/residual.py: right / wrong / n/a against the true ASR)

METHODS = ["ft", "fp", "nc", "sau", "npd", "ftsam", "tsbd", "awm", "strip", "auto"]
ATTACKS = ["badnets", "blended", "sig", "wanet"]
# CPU schedules: the library's CPU profile (each method registers it: trainers/purify/base.py;
# `vetset purify` uses it on a CPU device, the GPU run the published defaults), counted in
# optimizer STEPS (an epoch over 500 clean rows is 2-4 steps, so the published epoch counts
# mean 5x fewer updates there than on the published 2,500 rows). The rule: every published
# hyper-parameter kept, and the published number of updates (on 2,500 rows: SAU, NPD, FT-SAM
# 1,000, TSBD 400) where it fits in 5 minutes on one thread of the 2-core box under load, else
# the most that fits at the measured cost per step (SAU 1.7 s at batch 128, FT-SAM 0.55 s at
# batch 256; NPD, 0.25 s, runs its published 1,000); SAU at batch 128 (256 would halve its
# updates) at lr 5e-4 (chosen on 8 models, trainers/purify/sau.py), TSBD's unlearning lr 1e-2 (at
# 1e-4 it does not reach its 10% stopping point within the cap). Each method's reason is beside
# its registration; docs/benchmarks.md has the measurements.
CPU_OPTIONS = {name: dict(PURIFIERS.get(name).cpu) for name in PURIFIERS.names()}
BACKDOORBENCH = {  # specs/defenses.md (lossless CIFAR-10; our data is JPEG q75)
    "none": {"badnets": "91.32/95.03", "blended": "93.47/99.92", "sig": "84.48/98.27", "wanet": "91.25/89.73"},
    "ft": {"badnets": "89.96/1.48", "blended": "92.78/96.11", "sig": "90.80/2.37", "wanet": "93.48/17.10"},
    "fp": {"badnets": "91.31/57.13", "blended": "93.17/99.26", "sig": "89.10/26.20", "wanet": "91.46/1.09"},
    "nc": {"badnets": "89.05/1.27", "blended": "93.47/99.92", "sig": "84.48/98.27", "wanet": "91.80/7.53"},
}


def residual_config(args, **kw):
    """The residual estimate's config: ``--residual-steps`` when given, else the default."""
    from trainers.purify.residual import ResidualConfig

    return ResidualConfig(**({"steps_per_class": args.residual_steps} if args.residual_steps else {}), **kw)


def residual_of(model, clean, args, reference: dict | None = None) -> dict:
    """The residual estimate (with ``reference``, the input model's, for the transfer of its
    reversed trigger); ``_full`` keeps the whole estimate for use as a reference."""
    from trainers.purify.residual import describe, residual_estimate

    # the fresh reversal on a purified model is recorded here (reversal_evidence), though it
    # does not decide when the input model's trigger is transferred
    cfg = residual_config(args, fresh_reversal_after=True)
    est = residual_estimate(model, clean, cfg, device=args.device, seed=args.seed,
                            reference=(reference or {}).get("_full"))
    return {"evidence": est["evidence"], "class": est["class"], "smallest_to_median_l1": est["smallest_to_median_l1"],
            "reversal_evidence": est["reversal_evidence"], "transfer_rate": est["transfer_rate"],
            "transfer_decides": est["transfer_decides"], "smallest_class": est["smallest_class"],
            "seconds": est["seconds"], "describe": describe(est), "agrees": "n/a", "_full": est}


def run_auto(model, arch: str, clean, test, trigger, schedules: dict, rcfg, device, seed: int,
             extra: dict | None = None, arch_kwargs: dict | None = None, training_rows=None,
             profile: str = "published", audit=None):
    """``--method auto`` as ``vetset purify`` runs it (10% of the clean rows held out for the
    clean-accuracy rule; the residual estimate ``rcfg`` decides), with ``schedules`` (method ->
    options) for its steps and ``extra`` auto options (e.g. ``sequence``); prints the steps.
    ``training_rows``: the digests of the rows the model was trained on, saved with it as
    ``vetset train`` saves them, so the clean-accuracy rule knows which clean rows it fitted.
    ``profile``: the methods' schedules under ``schedules`` ("cpu" or "published").
    ``audit``: an audit's run folder of the model's training set (``vetset purify --audit``).
    Returns the kept model and an info dict (steps, chosen, passed). benchmarks/residual.py
    calls it too."""
    with tempfile.TemporaryDirectory(prefix="purify-auto-") as tmp:
        return _run_auto(Path(tmp), model, arch, clean, test, trigger, schedules, rcfg, device, seed, extra,
                         arch_kwargs, training_rows, profile, audit)


def _run_auto(tmp: Path, model, arch, clean, test, trigger, schedules, rcfg, device, seed, extra, arch_kwargs,
              training_rows, profile, audit=None):
    from trainers import load_model, save_model
    from trainers.purify.run import auto_config, purify_and_save

    src = save_model(model, tmp / "in", arch=arch, num_classes=clean.num_classes, class_names=list(clean.class_names),
                     input_size=clean.image_size, mean=model.norm.mean.flatten().tolist(),
                     std=model.norm.std.flatten().tolist(), arch_kwargs=arch_kwargs, training_rows=training_rows)
    seq = auto_config({k: v for k, v in (extra or {}).items() if k == "sequence"}).sequence
    opts = {f"{m}.{k}": v for m in seq for k, v in schedules.get(m, {}).items()}
    opts.update(extra or {})
    m = purify_and_save(clean=clean, method="auto", out=tmp / "out", model_dir=src, test=test, trigger=trigger,
                        options=opts, device=device, seed=seed, log=None, residual=rcfg, profile=profile,
                        audit=audit)
    p = m["purification"]
    steps = "; ".join(f"{s['method']} {'kept' if s['method'] == p['chosen'] else 'next'} "
                      f"(transfer {s['transfer_rate'] if s['transfer_rate'] is None else round(s['transfer_rate'], 2)}, "
                      f"CA drop {s.get('ca_drop', float('nan')):+.3f}, {s['seconds']:.0f}s)" for s in p["steps"])
    print(f"    auto steps: {steps}; passed {p['passed']}", flush=True)
    return load_model(tmp / "out"), {"steps": p["steps"], "chosen": p["chosen"], "passed": p["passed"],
                                     "skipped": p.get("skipped", []), "optimizer_steps": None, "epochs_run": None}


def injected_rows(sim):
    """The poisoned training rows whose own class is not the target (dirty-label: the rows an
    audit names as injected into the target class) as the purify run's AuditRows, or None."""
    from trainers.purify.audit_rows import AuditRows

    truth = sim.truth
    poisoned = truth["is_poisoned"].to_numpy()
    if not poisoned.any():
        return None
    target = int(np.bincount(sim.dataset.labels[poisoned]).argmax())
    rows = poisoned & (truth["original_label"].to_numpy() != target)
    if not rows.any():  # clean-label: the injected rows are the target's own images
        return None
    return AuditRows(sim.dataset.images[rows], target, str(sim.dataset.class_names[target]), "simulation")


def target_rate(model, rows, device) -> float | None:
    """The share of the injected rows the model puts in the target (None without rows)."""
    from trainers.purify.audit_rows import target_share

    return None if rows is None else target_share(model, rows, device)


def run_default_audit(sim, folder: Path, device, seed: int) -> Path:
    """The default audit (``vetset audit``'s detectors, no trusted set, rate not given) of the
    poisoned training set the model was trained on, as a user runs it before ``vetset purify
    --audit``: the set is written losslessly (PNG) to ``folder``/data.parquet and audited from
    there, so the purify run can read the audit's flagged rows back. Returns the audit's run
    folder; an existing one (same key) is reused."""
    from cleansers import DEFAULT_DETECTORS
    from cleansers.audit import run_audit
    from cleansers.base import AuditContext
    from pipelines.outputs import RunPaths
    from pipelines.parquet_io import write_dataset_parquet
    from pipelines.verdict import VERDICT, read_verdict

    run = folder / "audit"
    if not (run / VERDICT).exists():
        folder.mkdir(parents=True, exist_ok=True)
        write_dataset_parquet(sim.dataset, folder / "data.parquet")
        ds = load_dataset(folder / "data.parquet")
        t0 = time.perf_counter()
        run_audit(ds, list(DEFAULT_DETECTORS), RunPaths(run), run_id=folder.name,
                  ctx=AuditContext(device=str(device), seed=seed), truth=sim.truth)
        print(f"    audit of the training set: {time.perf_counter() - t0:.0f}s", flush=True)
    verdict = read_verdict(run / VERDICT)
    print(f"    audit: {verdict.headline}", flush=True)
    return run


def slice_table(path: Path, n: int | None, offset: int = 0) -> pa.Table:
    table = pq.read_table(path)
    if n is None or n >= table.num_rows:
        return table
    step = table.num_rows // n
    return table.take(pa.array(np.arange(n) * step + (offset % step)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=".device-data/cifar10")
    p.add_argument("--cpu-slice", type=int, help="CPU measurement: rows of the training slice (e.g. 6000)")
    p.add_argument("--attacks", nargs="+", default=None)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--poison-rate", type=float, default=None)
    p.add_argument("--clean-frac", type=float, default=0.05)
    p.add_argument("--train-epochs", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--arch", default=None,
                   help="the model (default: small_cnn on the CPU, preact_resnet18 on the GPU; e.g. preact_resnet_small)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    p.add_argument("--patch-size", type=int, default=None, help="BadNets patch side (default: the attack's 3)")
    p.add_argument("--out", default=None, help="write the results as JSON")
    p.add_argument("--attack-params", default=None,
                   help='JSON {attack: {param: value}}, e.g. \'{"blended": {"key": "skimage:astronaut"}}\' (a photo key)')
    p.add_argument("--options", default=None,
                   help='JSON {method: {option: value}} merged over the schedules (ablations), e.g. '
                        '\'{"sau": {"batch_size": 64}}\'; recorded with each row')
    p.add_argument("--clean-source", choices=("train", "test"), default="train",
                   help="where the clean rows come from: 'train' (default, BackdoorBench's setting: training rows the "
                        "simulator left clean, which the backdoored model has seen) or 'test' (CPU slices only: test "
                        "rows disjoint from the 2,000 evaluated, as a user with a separate clean set has)")
    p.add_argument("--train-augment", action="store_true",
                   help="CPU slices: train the backdoored model with the preset's crop + flip, as `vetset train` does "
                        "(the default trains without, so that the small CNN learns a 3x3 patch in 10 epochs)")
    p.add_argument("--no-training-rows", action="store_true",
                   help="auto: save the backdoored model without the list of its training rows (as a model from "
                        "elsewhere comes), so the clean-accuracy rule cannot tell which clean rows it fitted")
    p.add_argument("--residual", action="store_true",
                   help="also run the trigger-free residual-backdoor estimate (trainers/purify/residual.py) on the "
                        "backdoored and on every purified model, and score it against the true ASR")
    p.add_argument("--residual-steps", type=int, default=None, help="its reversal steps per class")
    p.add_argument("--audit", action="store_true",
                   help="run the default audit on each poisoned training set first and give it to the methods "
                        "as `vetset purify --audit RUN` does (the class it names is NPD's and SAU's target, auto "
                        "runs its class-aimed steps and checks the audit's flagged rows); kept under "
                        "--model-cache when given")
    p.add_argument("--model-cache", default=None,
                   help="folder: keep each backdoored model (state dict + its CA / ASR) keyed by the setting "
                        "and reuse it on the next run (the training is most of a CPU run's time)")
    args = p.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cpu = args.cpu_slice is not None
    extra_options = json.loads(args.options) if args.options else {}
    device = resolve_device(args.device)
    attacks = args.attacks or (["badnets"] if cpu else ATTACKS)
    rate = args.poison_rate if args.poison_rate is not None else (0.05 if cpu else 0.10)
    data = Path(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="purify-bench-"))
    n_train = args.cpu_slice
    pq.write_table(slice_table(data / "train.parquet", n_train), tmp / "train.parquet")
    pq.write_table(slice_table(data / "test.parquet", 2000 if cpu else None), tmp / "test.parquet")
    train_all, test = load_dataset(tmp / "train.parquet"), load_dataset(tmp / "test.parquet")
    if args.clean_source == "test":
        if not cpu:
            raise SystemExit("error: --clean-source test needs --cpu-slice (the GPU run evaluates the whole test split)")
        pq.write_table(slice_table(data / "test.parquet", 2000, offset=1), tmp / "clean_test.parquet")
        clean_test = load_dataset(tmp / "clean_test.parquet")  # every 5th test row from row 1: disjoint
    shutil.rmtree(tmp, ignore_errors=True)  # the slices are loaded; the parquet copies are not needed
    arch, recipe = ("small_cnn", "cpu_small") if cpu else ("preact_resnet18", "fast")
    arch = args.arch or arch
    results = []
    for attack in attacks:
        params = {"size": args.patch_size} if (args.patch_size and attack == "badnets") else {}
        params.update((json.loads(args.attack_params) if args.attack_params else {}).get(attack, {}))
        sim = simulate(train_all, SimulationSpec(attack=attack, poison_rate=rate, seed=args.seed, attack_params=params))
        clean_rows = np.flatnonzero(~sim.truth["is_poisoned"].to_numpy())
        clean_pool = train_all.subset(clean_rows)  # the original pixels and labels of unpoisoned rows
        if args.clean_source == "test":
            clean_pool = clean_test
        n_clean = int(round(args.clean_frac * len(train_all)))
        mean, std = channel_stats(sim.dataset.images)
        model = build_model(arch, 10, (32, 32), mean, std, seed=args.seed)
        overrides = {"epochs": args.train_epochs} if args.train_epochs else {}
        if cpu and not args.train_augment:  # no crop/flip: with random crop the small CNN barely learns a 3x3 patch in 10 epochs
            overrides["augment"] = {"crop": False, "flip": False}
        cfg = preset(recipe, device=str(device), seed=args.seed, **overrides)
        tag = "-".join(f"{k}={v}" for k, v in sorted(params.items())).replace("/", "_").replace(":", "_")
        key = f"{arch}-{attack}-{rate}-{args.seed}-{n_train}-{args.train_epochs}-{args.patch_size}"
        key += "-augment" if (cpu and args.train_augment) else ""
        key += f"-{tag}" if tag else ""
        cached = Path(args.model_cache) / f"{key}.pt" if args.model_cache else None
        if cached is not None and cached.exists():
            saved = torch.load(cached, map_location="cpu", weights_only=False)
            model.load_state_dict(saved["state"])
            train_s, base = saved["train_seconds"], saved["base"]
            print(f"[{attack}] the backdoored model from {cached}", flush=True)
        else:
            t0 = time.perf_counter()
            fit(model, sim.dataset.images, sim.dataset.labels, cfg)
            train_s = time.perf_counter() - t0
            base = evaluate(model, test, sim.trigger)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"state": model.state_dict(), "train_seconds": train_s, "base": base}, cached)
        print(f"[{attack}] trained {arch} in {train_s:.0f}s: CA {base['clean_acc']:.4f} ASR {base['asr']:.4f}",
              flush=True)
        audit_run, named = None, (None, None)
        if args.audit:
            audit_home = (Path(args.model_cache) / f"{key}-audit" if args.model_cache
                          else Path(tempfile.mkdtemp(prefix="purify-bench-audit-")))
            audit_run = run_default_audit(sim, audit_home, device, args.seed)
            named = audit_target(audit_run, sim.dataset.class_names)
            print(f"[{attack}] audit: {named[1]}", flush=True)
        injected = injected_rows(sim)
        base_injected = target_rate(model, injected, device)
        res_before = residual_of(model, balanced_subset(clean_pool, n_clean, args.seed), args) if args.residual else None
        if res_before is not None:
            res_before["agrees"] = agreement(base["asr"], res_before["evidence"])
            print(f"[{attack}] residual estimate of the backdoored model: {res_before['describe']} "
                  f"({res_before['agrees']})", flush=True)
        runs = [(m, n_clean) for m in args.methods]
        if "awm" in args.methods:
            runs += [("awm", int(round(0.01 * len(train_all)))), ("awm", 10)]
        for method, n in runs:
            clean = balanced_subset(clean_pool, n, args.seed)
            profile = "cpu" if cpu else "published"
            options = profile_options(method, extra_options.get(method), profile) if method != "auto" else {}
            t0 = time.perf_counter()
            if method == "auto":
                schedules = {m: opts for m, opts in extra_options.items() if m not in ("auto", "strip")}
                rcfg = residual_config(args)
                purified, info = run_auto(model, arch, clean, test, sim.trigger, schedules, rcfg, device, args.seed,
                                          extra=extra_options.get("auto"),
                                          training_rows=None if args.no_training_rows else row_digests(sim.dataset.images),
                                          profile=profile, audit=audit_run)
            else:
                # NPD's CPU profile aims its attack at the class the residual estimate names,
                # as `vetset purify` does (without --residual: each row's most likely wrong class)
                mcfg, target_note = resolve_estimated_target(make_config(method, dict(options)), res_before, named)
                if target_note:
                    print(f"[{attack}] {method}: {target_note}", flush=True)
                purified, info = purify(method, copy.deepcopy(model), clean, mcfg, device=device, seed=args.seed)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            after = evaluate(purified, test, sim.trigger)
            # the share of the training set's dirty-label injected rows (their own class is not the
            # target) that the model calls the target: what an audit's flagged rows would tell
            inj = {"injected_target_rate_before": base_injected,
                   "injected_target_rate_after": target_rate(purified, injected, device)}
            row = {**inj, "attack": attack, "method": method, "n_clean": n, "options": options,
                   "ca_before": base["clean_acc"], "asr_before": base["asr"],
                   "ca_after": after["clean_acc"], "asr_after": after["asr"], "ra_after": after["ra"],
                   "seconds": seconds, "train_seconds": train_s,
                   "audit_class": (None if named[0] is None else str(sim.dataset.class_names[named[0]])),
                   "optimizer_steps": info.get("optimizer_steps"), "epochs_run": info.get("epochs_run"),
                   # what the method decided (TSBD's chosen share of channels, NPD's target, ...)
                   "purification": json.loads(json.dumps({k: v for k, v in info.items() if k != "wrapper"},
                                                         default=str))}
            if args.residual:
                res = residual_of(purified, clean, args, reference=res_before)
                res["agrees"] = agreement(after["asr"], res["evidence"])
                res["agrees_reversal_only"] = agreement(after["asr"], res["reversal_evidence"])
                row.update(residual_before=res_before, residual_after=res)
            if method == "nc":
                row.update(nc_backdoored=info["backdoored"], nc_target=info["target_class"],
                           nc_max_anomaly=info["max_anomaly_index"])
            if method == "strip":
                row.update(strip_rates(purified, test, sim.trigger))
            results.append(row)
            extra = ""
            if method == "nc":
                extra = f" backdoored={info['backdoored']} target={info['target_class']}"
            if method == "strip":
                extra = f" FRR {row['strip_frr']:.4f} FAR {row['strip_far']:.4f}"
            if info.get("optimizer_steps") is not None:
                extra += f" ({info['optimizer_steps']} steps)"
            if inj["injected_target_rate_after"] is not None:
                extra += (f"; injected rows called the target {inj['injected_target_rate_before']:.3f}"
                          f"->{inj['injected_target_rate_after']:.3f}")
            if args.residual:
                extra += f"; residual estimate: {row['residual_after']['describe']} ({row['residual_after']['agrees']})"
            print(f"[{attack}] {method:6s} n={n:5d} {seconds:6.1f}s CA {row['ca_before']:.4f}->{row['ca_after']:.4f} "
                  f"ASR {row['asr_before']:.4f}->{row['asr_after']:.4f}{extra}", flush=True)
    print("\n| attack | method | clean rows | steps | CA before | ASR before | CA after | ASR after | s "
          "| BackdoorBench CA/ASR |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        bb = BACKDOORBENCH.get(r["method"], {}).get(r["attack"], "")
        steps = r["optimizer_steps"] if r["optimizer_steps"] is not None else ""
        print(f"| {r['attack']} | {r['method']} | {r['n_clean']} | {steps} | {100 * r['ca_before']:.2f} "
              f"| {100 * r['asr_before']:.2f} | {100 * r['ca_after']:.2f} | {100 * r['asr_after']:.2f} "
              f"| {r['seconds']:.1f} | {bb} |")
    if args.residual:
        # the backdoored model's estimate counts once per attack; ASR in the 5-20% band is not scored
        seen, right, total = set(), 0, 0
        for r in results:
            for which, est in (("before", r["residual_before"]), (r["method"], r["residual_after"])):
                key = (r["attack"], which)
                if key in seen or est["agrees"] not in ("right", "wrong"):
                    continue
                seen.add(key)
                total += 1
                right += est["agrees"] == "right"
        print(f"\nresidual estimate agrees with the true ASR (evidence when ASR > 20%, none when < 5%) on "
              f"{right} of {total} scored models")
        purified = [r["residual_after"] for r in results if r["residual_after"]["agrees"] in ("right", "wrong")]
        only = [r["residual_after"] for r in results if r["residual_after"]["agrees_reversal_only"] in ("right", "wrong")]
        print(f"purified models: {sum(e['agrees'] == 'right' for e in purified)} of {len(purified)}; with the reversal "
              f"alone (no transfer): {sum(e['agrees_reversal_only'] == 'right' for e in only)} of {len(only)}")
    if args.out:
        for r in results:
            for key in ("residual_before", "residual_after"):
                if r.get(key):
                    r[key] = {k: v for k, v in r[key].items() if not k.startswith("_")}
        Path(args.out).write_text(json.dumps({"device": str(device), "cpu_slice": args.cpu_slice, "rate": rate,
                                              "clean_source": args.clean_source,
                                              "results": results}, indent=2))


if __name__ == "__main__":
    main()
