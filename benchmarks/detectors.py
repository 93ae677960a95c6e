"""The attack x detector matrix: the default audit (or any detectors) on simulated dirt of
every family, several rates and seeds, no trusted set and no rate given (no Prefect needed).

For each (scenario, rate, seed): a clean CIFAR-10 train set (or an evenly spread slice),
dirtied by :mod:`pipelines.simulate`, audited by :func:`cleansers.audit.run_audit` with a
fresh AuditContext (the detection model is trained once per audit and shared by its
detectors). Printed per cell: each detector's and the fused TPR / FPR / F1 / AUROC, split
into poisoned and noisy rows, the verdict (named classes, status), the undefended ASR of
the detection model (trained on the dirty data without any defense; an attack it does not
learn, ASR < 50%, is reported as such and left out of the summary) and seconds. Then a
summary over seeds (mean and spread of the fused poisoned F1, noisy TPR, clean FPR).

``--save DIR`` keeps every audit's detector results (pickle) so that ``--redecide DIR``
re-runs only the verdict on them (seconds, not hours): how the verdict's rules were chosen
on the whole matrix at once, never on one case.

CPU (6,000-row slices, the small CNN picked automatically; about 3 minutes per cell):
    python benchmarks/detectors.py --data ../shared/data/cifar10 --rows 6000 --scenarios cpu --seeds 0,1,2 \
        --save runs/bench-detectors --json runs/bench-detectors/matrix.json
GPU (full train set, PreAct-ResNet18 picked automatically on CUDA):
    python benchmarks/detectors.py --data .device-data/cifar10 --device cuda --scenarios gpu --seeds 0 \
        --json $OUT/detectors.json
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cleansers  # noqa: E402,F401  (registers the detectors)
from cleansers import DEFAULT_DETECTORS  # noqa: E402
from cleansers.audit import run_audit  # noqa: E402
from cleansers.base import AUDIT_THREADS, AuditContext  # noqa: E402
from cleansers.fusion import FusionConfig, fuse_and_decide  # noqa: E402
from pipelines.attacks import backdoor_test_set  # noqa: E402
from pipelines.loaders import LoadOptions, table_to_dataset  # noqa: E402
from pipelines.metrics import audit_metrics  # noqa: E402
from pipelines.outputs import RunPaths  # noqa: E402
from pipelines.simulate import SimulationSpec, simulate  # noqa: E402
from pipelines.slices import spread_slice  # noqa: E402

# name -> (attack, attack params, noise, uses the poison rate, uses the noise rate)
SCENARIOS: dict[str, tuple] = {
    "badnets": ("badnets", {}, None),
    "patch": ("patch", {}, None),  # a seeded 4x4 two-colour patch somewhere
    "blended": ("blended", {}, None),  # smooth seeded key, alpha 0.2
    "blended-photo": ("blended", {"key": "skimage:chelsea", "alpha": 0.2}, None),
    "blended-photo2": ("blended", {"key": "skimage:astronaut", "alpha": 0.2}, None),
    "blended-photo3": ("blended", {"key": "skimage:coffee", "alpha": 0.2}, None),
    "blended-photo4": ("blended", {"key": "skimage:rocket", "alpha": 0.2}, None),  # third held-out key
    "blended-noise": ("blended", {"key_cells": 0, "alpha": 0.1}, None),
    "sig": ("sig", {}, None),
    "wanet": ("wanet", {}, None),
    "lowfreq": ("lowfreq", {}, None),
    "trojan": ("trojan", {}, None),
    "symmetric": (None, {}, "symmetric"),
    "pairflip": (None, {}, "pairflip"),
    "instance": (None, {}, "instance"),
    "hybrid": ("blended", {}, "instance"),  # 5% blended + 10% instance-dependent noise (the hybrid)
    "clean": (None, {}, None),
}
GROUPS = {
    "cpu": ["badnets", "patch", "blended-photo", "blended-noise", "sig", "wanet", "lowfreq", "trojan",
            "symmetric", "pairflip", "instance", "hybrid", "clean"],
    "gpu": ["badnets", "blended", "sig", "wanet", "hybrid", "clean"],
    "attacks": ["badnets", "patch", "blended", "blended-photo", "blended-noise", "sig", "wanet", "lowfreq", "trojan"],
    "noise": ["symmetric", "pairflip", "instance"],
}


def load(data: Path, split: str, rows: int, offset: int = 0):
    table = spread_slice(pq.read_table(data / f"{split}.parquet"), rows, offset)
    return table_to_dataset(table, LoadOptions(), str(data / f"{split}.parquet"))


def trusted_set(data: Path, per_class: int):
    """``per_class`` rows of each class from the TEST split (disjoint from what is audited)."""
    test = load(data, "test", 0)
    idx = np.concatenate([np.flatnonzero(test.labels == c)[:per_class] for c in range(test.num_classes)])
    return test.subset(np.sort(idx))


def parse_options(items: list[str]) -> dict[str, dict]:
    """``detector.option=value`` (value parsed as JSON when it can be)."""
    out: dict[str, dict] = {}
    for item in items:
        key, value = item.split("=", 1)
        det, opt = key.split(".", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(det, {})[opt] = parsed
    return out


def reference_probs(clean, cache: Path | None, device: str, seed: int = 12345) -> np.ndarray:
    """A reference model's out-of-sample probabilities on the clean rows (what instance-
    dependent noise draws its flips from), cached on disk per dataset fingerprint."""
    path = cache / f"refprobs-{clean.fingerprint[:16]}.npy" if cache else None
    if path is not None and path.exists():
        return np.load(path)
    from cleansers.detection_model import reference_probabilities

    probs = reference_probabilities(clean, device=device, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, probs)
    return probs


def make_spec(name: str, rate: float, noise_rate: float, seed: int, probs, target: int = 0) -> SimulationSpec:
    attack, params, noise = SCENARIOS[name]
    if name == "hybrid":
        rate = min(rate, 0.05)
    noise_params = {"probs": probs} if noise == "instance" else {}
    return SimulationSpec(attack=attack, poison_rate=rate if attack else 0.0, attack_params=dict(params),
                          noise=noise, noise_rate=noise_rate if noise else 0.0, noise_params=noise_params, seed=seed,
                          target=target)


def shared_model_key(ctx: AuditContext, ds) -> tuple | None:
    """The cache key of the audit's shared detection model: the first model trained on ``ds``
    (AGPD and dynamics train it first; confident learning reads a model of its own on the
    CPU, trained with crop, which learns some triggers less)."""
    keys = [k for k in ctx.model_cache if isinstance(k, tuple) and k[0] == "model" and len(k) == 4
            and k[1] == ds.fingerprint]
    return keys[0] if keys else None


def undefended_asr(ctx: AuditContext, ds, test, trigger) -> float | None:
    """ASR of the audit's detection model (trained on the dirty rows, no defense) on the
    test slice's non-target rows with the trigger."""
    if trigger is None or test is None:
        return None
    from trainers.loop import predict_logits

    key = shared_model_key(ctx, ds)
    if key is None:
        return None
    dm = ctx.model_cache[key]
    bd = backdoor_test_set(test, trigger)
    pred = predict_logits(dm.model, bd.images, device=dm.device, amp=False).argmax(1)
    return float((pred == trigger["target"]).mean())


def cell_rows(cell: dict, metrics: dict, verdict, detectors: list[str]) -> list[dict]:
    rows = []
    for key in detectors + ["fused"]:
        entry = metrics.get(key, {})
        row = {**{k: cell[k] for k in ("scenario", "rate", "seed", "asr", "seconds")}, "detector": key}
        for part in ("all", "poisoned", "noisy"):
            if part in entry:
                m = entry[part]
                row[part] = {k: m[k] for k in ("tpr", "fpr", "precision", "f1", "auroc", "n_flagged")}
        if key == "fused":
            row["verdict"] = {"status": verdict.status, "backdoor_classes": verdict.backdoor_classes,
                              "suspected_poisoned": verdict.suspected_poisoned,
                              "suspected_mislabelled": verdict.suspected_mislabelled}
        rows.append(row)
    return rows


def pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| scenario | rate | seed | ASR % | detector | TPR % | FPR % | F1 % | AUROC | poisoned F1 % | noisy TPR % "
             "| verdict | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r.get("all", {})
        v = r.get("verdict")
        vtxt = (f"{v['status']} {','.join(v['backdoor_classes'])}" if v else "")
        lines.append(f"| {r['scenario']} | {r['rate']:g} | {r['seed']} | {pct(r.get('asr'))} | {r['detector']} | "
                     f"{pct(a.get('tpr'))} | {pct(a.get('fpr'))} | {pct(a.get('f1'))} | "
                     f"{a.get('auroc', float('nan')):.3f} | {pct(r.get('poisoned', {}).get('f1'))} | "
                     f"{pct(r.get('noisy', {}).get('tpr'))} | {vtxt} | "
                     f"{'-' if r.get('seconds') is None or r['detector'] != 'fused' else round(r['seconds'])} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per (scenario, rate): the fused figures' mean and range over seeds."""
    fused = [r for r in rows if r["detector"] == "fused"]
    groups: dict = {}
    for r in fused:
        groups.setdefault((r["scenario"], r["rate"]), []).append(r)
    lines = ["| scenario | rate | seeds | ASR % (undefended) | poisoned F1 % | poisoned TPR % | noisy TPR % | "
             "clean FPR % | target named | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]

    def stat(values):
        v = [x for x in values if x is not None and x == x]
        if not v:
            return "-"
        return f"{100 * np.mean(v):.1f} ({100 * min(v):.0f}-{100 * max(v):.0f})" if len(v) > 1 else f"{100 * v[0]:.1f}"

    for (scen, rate), rs in groups.items():
        named = [f"{len(r['verdict']['backdoor_classes'])}:{','.join(r['verdict']['backdoor_classes'])}" for r in rs]
        asr = [r.get("asr") for r in rs]
        lines.append(
            f"| {scen} | {rate:g} | {len(rs)} | {stat(asr)} | {stat([r.get('poisoned', {}).get('f1') for r in rs])} | "
            f"{stat([r.get('poisoned', {}).get('tpr') for r in rs])} | {stat([r.get('noisy', {}).get('tpr') for r in rs])} | "
            f"{stat([r.get('all', {}).get('fpr') for r in rs])} | {' '.join(named)} | "
            f"{np.mean([r['seconds'] for r in rs if r.get('seconds')] or [0]):.0f} |")
    return "\n".join(lines)


def refresh_evidence(result) -> None:
    """Re-derive a saved result's class evidence with the current rules where it is a pure
    function of what the detector recorded (AGPD: its z per class, rule and model)."""
    info = result.info
    if result.name == "dynamics":
        from cleansers.dynamics import DynamicsConfig, tail_strength

        for e in info.get("class_evidence", []):
            if e["signal"] == "early_tail":
                e["strength"] = tail_strength(e["value"], DynamicsConfig())
    if result.name == "agpd" and "z_best_layer" in info:
        from cleansers.agpd import AGPDConfig, class_evidence

        info["class_evidence"] = class_evidence(np.asarray(info["z_best_layer"]), info.get("target_class_ids", []),
                                                info.get("rule", "clean"), AGPDConfig(),
                                                info.get("model", {}).get("arch", ""))


def add_feature_pcs(result, saved: dict) -> None:
    """A dynamics result saved before ``arrays["feature_pcs"]`` / ``["second_choice"]``
    existed: compute them from the penultimate features and logits the save kept (``probe``;
    features in float16 there, so within rounding of what the detector computes)."""
    if result.name != "dynamics":
        return
    logits = saved.get("probe", {}).get("logits")
    if "second_choice" not in result.arrays and logits is not None:
        from cleansers.dynamics import second_choice

        result.arrays["second_choice"] = second_choice(logits, saved["dataset"].labels)
    feats = saved.get("probe", {}).get("features")
    if "feature_pcs" in result.arrays or feats is None:
        return
    from cleansers.dynamics import DynamicsConfig, class_feature_pcs

    cfg = DynamicsConfig()
    result.arrays["feature_pcs"] = class_feature_pcs(feats, saved["dataset"].labels, cfg.feature_pcs, cfg.min_rows)


def decide_saved(saved: dict, config: FusionConfig | None = None):
    """The verdict again on one saved cell with the current rules (no training): (scores
    frame, verdict, metrics per detector and fused)."""
    for r in saved["results"]:
        refresh_evidence(r)
        add_feature_pcs(r, saved)
    frame, verdict = fuse_and_decide(saved["dataset"], saved["results"], config)
    return frame, verdict, audit_metrics(frame, saved["truth"], [r.name for r in saved["results"]])


def redecide(folder: Path, config: FusionConfig | None = None, verbose: bool = False) -> list[dict]:
    """The verdict again on every saved cell of ``folder`` (no training)."""
    rows = []
    for path in sorted(folder.glob("*.pkl")):
        with path.open("rb") as f:
            saved = pickle.load(f)
        _, verdict, metrics = decide_saved(saved, config)
        rows += cell_rows(saved["cell"], metrics, verdict, [r.name for r in saved["results"]])
        if verbose:
            print(path.stem, verdict.headline[:200])
    return rows


def _value(text: str):
    """A --verdict value: JSON (true, 0.5, [1, 2]) or, failing that, the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="folder with train.parquet and test.parquet")
    p.add_argument("--rows", type=int, default=0, help="evenly spread slice of the train set (0 = all)")
    p.add_argument("--scenarios", default="cpu", help=f"names or groups ({', '.join(GROUPS)}): {', '.join(SCENARIOS)}")
    p.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS), help="default: cleansers.DEFAULT_DETECTORS")
    p.add_argument("--rates", default="0.05,0.1", help="poisoning rates (fractions of all rows)")
    p.add_argument("--noise-rate", type=float, default=0.1)
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=AUDIT_THREADS,
                   help=f"the audit's fixed torch threads (default {AUDIT_THREADS}, as `vetset audit`); 0 = torch's own")
    p.add_argument("--target", type=int, default=0, help="the attacks' target class (0, BackdoorBench's default)")
    p.add_argument("--test-rows", type=int, default=2000, help="test rows for the undefended ASR")
    p.add_argument("--trusted-per-class", type=int, default=0, help="trusted clean rows per class from test.parquet")
    p.add_argument("--opt", action="append", default=[], help="detector.option=value, e.g. agpd.epochs=20")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--save", type=Path, default=None, help="keep each cell's detector results here (for --redecide)")
    p.add_argument("--reports", type=Path, default=None,
                   help="keep each cell's audit folder (report.html, scores, verdict) here, one folder a cell")
    p.add_argument("--redecide", type=Path, default=None, help="re-run only the verdict on a --save folder")
    p.add_argument("--skip-done", action="store_true", help="with --save: skip cells already saved")
    p.add_argument("--verdict", action="append", default=[],
                   help="with --redecide: a VerdictConfig option=value, e.g. refine=false (the rules' before/after)")
    args = p.parse_args(argv)

    if args.redecide:
        config = FusionConfig(**{k: _value(v) for k, v in (item.split("=", 1) for item in args.verdict)})
        rows = redecide(args.redecide, config, verbose=True)
        print(markdown([r for r in rows if r["detector"] == "fused"]))
        print("\n" + summary(rows))
        return 0
    if args.data is None:
        p.error("--data is needed (or --redecide)")
    names = []
    for s in [x for x in args.scenarios.split(",") if x]:
        names += GROUPS.get(s, [s])
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)} and groups {', '.join(GROUPS)}")
    rates = [float(r) for r in args.rates.split(",") if r]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    t0 = time.perf_counter()
    clean = load(args.data, "train", args.rows)
    test = load(args.data, "test", args.test_rows) if args.test_rows else None
    print(f"loaded {len(clean)} rows in {time.perf_counter() - t0:.1f}s", flush=True)
    trusted = trusted_set(args.data, args.trusted_per_class) if args.trusted_per_class else None
    options = parse_options(args.opt)
    detectors = [d for d in args.detectors.split(",") if d]
    probs = None
    if any(SCENARIOS[n][2] == "instance" for n in names):
        probs = reference_probs(clean, args.save, args.device)
    all_rows = []
    tmp = tempfile.TemporaryDirectory()
    for name in names:
        attack = SCENARIOS[name][0]
        cell_rates = rates if attack and name != "hybrid" else [min(rates) if name == "hybrid" else 0.0]
        for rate in cell_rates:
            rate = min(rate, 0.05) if name == "hybrid" else rate  # the hybrid's poisoning is 5%
            for seed in seeds:
                stem = f"{name}-{rate:g}-s{seed}" + (f"-t{args.target}" if args.target else "")
                if args.save and args.skip_done and (args.save / f"{stem}.pkl").exists():
                    print(f"{stem}: saved already, skipped", flush=True)
                    continue
                sim = simulate(clean, make_spec(name, rate, args.noise_rate, seed, probs, args.target))
                ctx = AuditContext(device=args.device, seed=seed, trusted=trusted, threads=args.threads or None)
                start = time.perf_counter()
                root = (args.reports or Path(tmp.name)) / stem
                result = run_audit(sim.dataset, detectors, RunPaths(root), run_id=stem, ctx=ctx,
                                   options=options, truth=sim.truth)
                seconds = time.perf_counter() - start
                cell = {"scenario": name, "rate": rate, "seed": seed, "seconds": seconds,
                        "asr": undefended_asr(ctx, sim.dataset, test, sim.trigger), "counts": sim.counts}
                rows = cell_rows(cell, result.metrics["detection"], result.verdict, detectors)
                all_rows += rows
                print(f"\n## {stem}: {sim.counts['n_poisoned']} poisoned, {sim.counts['n_noisy']} noisy of {len(clean)}; "
                      f"undefended ASR {pct(cell['asr'])}%; audit {seconds:.0f}s\n{result.verdict.headline}", flush=True)
                print(markdown(rows), flush=True)
                if args.save:
                    args.save.mkdir(parents=True, exist_ok=True)
                    slim = [type(r)(r.name, r.score, r.flag, r.suggested_label, r.info, r.arrays) for r in result.results]
                    # the shared detection model's logits and penultimate features, for studying
                    # the verdict's row rules offline (not read by --redecide)
                    shared = shared_model_key(ctx, sim.dataset)
                    probe = {key[-1]: np.asarray(v, dtype=np.float32 if key[-1] == "logits" else np.float16)
                             for key, v in ctx.model_cache.items()
                             if isinstance(key, tuple) and len(key) == 5 and key[:4] == shared
                             and key[-1] in ("logits", "features")}
                    with (args.save / f"{stem}.pkl").open("wb") as f:
                        pickle.dump({"cell": cell, "results": slim, "truth": sim.truth, "probe": probe,
                                     "dataset": sim.dataset.replace(images=sim.dataset.images[:, :1, :1])}, f)
    tmp.cleanup()
    if args.save:
        all_rows = redecide(args.save)
    print("\n" + summary(all_rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"argv": sys.argv, "rows_audited": len(clean), "results": all_rows},
                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
