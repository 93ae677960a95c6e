"""Benchmark the detectors and the fusion on simulated attacks (no Prefect needed).

For each scenario: a clean CIFAR-10 train set (or a class-balanced slice of it), poisoned
and/or label-noised by :mod:`pipelines.simulate`, audited by
:func:`cleansers.audit.run_audit` with a fresh AuditContext (so the detection model is
trained once per scenario and shared by the detectors of that audit). Prints, per detector
and for the fusion, TPR / FPR / F1 / AUROC (all dirt, poisoned only, noisy only) and the
time each took, and writes them as JSON.

GPU machine (full train set, PreAct-ResNet18 picked automatically on CUDA; AGPD as published
reads a few clean rows per class, here 10 test rows per class; drop --trusted-per-class for
the audit a user without a trusted set gets):
    python benchmarks/detectors.py --data .device-data/cifar10 --device cuda --trusted-per-class 10 \
        --scenarios badnets,blended,sig,wanet,hybrid --json $OUT/detectors.json
CPU (6,000-row slice, 5% BadNets; the small CNN picked automatically on the CPU):
    python benchmarks/detectors.py --data ../shared/data/cifar10 --rows 6000 \
        --scenarios badnets --poison-rate 0.05
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cleansers  # noqa: E402,F401  (registers the detectors)
from cleansers import DEFAULT_DETECTORS  # noqa: E402
from cleansers.audit import run_audit  # noqa: E402
from cleansers.base import AuditContext  # noqa: E402
from cleansers.fusion import FusionConfig  # noqa: E402
from pipelines.loaders import LoadOptions, table_to_dataset  # noqa: E402
from pipelines.outputs import RunPaths  # noqa: E402
from pipelines.simulate import SimulationSpec, simulate  # noqa: E402

SCENARIOS = {
    "badnets": lambda r, nr: SimulationSpec(attack="badnets", poison_rate=r),
    "blended": lambda r, nr: SimulationSpec(attack="blended", poison_rate=r),
    "sig": lambda r, nr: SimulationSpec(attack="sig", poison_rate=r),
    "wanet": lambda r, nr: SimulationSpec(attack="wanet", poison_rate=r),
    "hybrid": lambda r, nr: SimulationSpec(attack="badnets", poison_rate=r, noise="symmetric", noise_rate=nr),
    "noise": lambda r, nr: SimulationSpec(noise="symmetric", noise_rate=nr),
    "clean": lambda r, nr: SimulationSpec(),
}


def balanced_slice(table: pa.Table, n: int, offset: int = 0) -> pa.Table:
    """``n`` rows spread evenly over the file (the shared files are sorted by label)."""
    if n <= 0 or n >= table.num_rows:
        return table
    step = table.num_rows // n
    return table.take(pa.array(np.arange(n) * step + (offset % step)))


def load(data: Path, split: str, rows: int, offset: int = 0):
    table = balanced_slice(pq.read_table(data / f"{split}.parquet"), rows, offset)
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


def pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def summarise(name: str, result, seconds: dict) -> list[dict]:
    det = result.metrics["detection"]
    rows = []
    for key in [r.name for r in result.results] + ["fused"]:
        entry = det[key]
        row = {"scenario": name, "detector": key, "seconds": seconds.get(key)}
        for part in ("all", "poisoned", "noisy"):
            if part in entry:
                m = entry[part]
                row[part] = {k: m[k] for k in ("tpr", "fpr", "precision", "f1", "auroc", "n_flagged")}
        rows.append(row)
    return rows


def _secs(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def markdown(rows: list[dict]) -> str:
    lines = ["| scenario | detector | TPR % | FPR % | F1 % | AUROC | poisoned TPR % | noisy TPR % | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r.get("all", {})
        lines.append(f"| {r['scenario']} | {r['detector']} | {pct(a.get('tpr'))} | {pct(a.get('fpr'))} | "
                     f"{pct(a.get('f1'))} | {a.get('auroc', float('nan')):.4f} | "
                     f"{pct(r.get('poisoned', {}).get('tpr'))} | {pct(r.get('noisy', {}).get('tpr'))} | "
                     f"{_secs(r['seconds'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train.parquet (and test.parquet)")
    p.add_argument("--rows", type=int, default=0, help="class-balanced slice of the train set (0 = all)")
    p.add_argument("--scenarios", default="badnets,blended,sig,wanet,hybrid")
    p.add_argument("--detectors", default=",".join(DEFAULT_DETECTORS), help="default: cleansers.DEFAULT_DETECTORS")
    p.add_argument("--poison-rate", type=float, default=0.1)
    p.add_argument("--noise-rate", type=float, default=0.1)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trusted-per-class", type=int, default=0, help="trusted clean rows per class from test.parquet")
    p.add_argument("--expected-dirty-rate", type=float, default=None, help="default: poison + noise rate")
    p.add_argument("--opt", action="append", default=[], help="detector.option=value, e.g. agpd.epochs=20")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--runs", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    clean = load(args.data, "train", args.rows)
    load_seconds = time.perf_counter() - t0
    trusted = trusted_set(args.data, args.trusted_per_class) if args.trusted_per_class else None
    options = parse_options(args.opt)
    detectors = [d for d in args.detectors.split(",") if d]
    print(f"loaded {len(clean)} rows in {load_seconds:.1f}s; detectors {detectors}; options {options}", flush=True)
    all_rows, runs = [], {}
    tmp = tempfile.TemporaryDirectory() if args.runs is None else None
    root = Path(tmp.name) if tmp else args.runs
    for name in [s for s in args.scenarios.split(",") if s]:
        spec = SCENARIOS[name](args.poison_rate, args.noise_rate)
        spec.seed = args.seed
        sim = simulate(clean, spec)
        rate = args.expected_dirty_rate
        if rate is None:
            rate = (sim.counts["n_poisoned"] + sim.counts["n_noisy"]) / len(clean) or 0.1
        ctx = AuditContext(device=args.device, seed=args.seed, trusted=trusted, expected_dirty_rate=rate)
        start = time.perf_counter()
        result = run_audit(sim.dataset, detectors, RunPaths(root / name), run_id=name, ctx=ctx, options=options,
                           fusion=FusionConfig(), truth=sim.truth)
        total = time.perf_counter() - start
        seconds = {r.name: r.info["seconds"] for r in result.results}
        seconds["fused"] = total
        rows = summarise(name, result, seconds)
        all_rows += rows
        runs[name] = {"counts": sim.counts, "audit_seconds": total,
                      "detectors": {r.name: {k: v for k, v in r.info.items() if k != "config"} for r in result.results}}
        print(f"\n## {name}: {sim.counts['n_poisoned']} poisoned, {sim.counts['n_noisy']} noisy of {len(clean)}; "
              f"audit {total:.1f}s (fused row = whole audit incl. training and writing)", flush=True)
        print(markdown(rows), flush=True)
        for r in result.results:
            brief = {k: r.info[k] for k in ("target_classes", "rule", "max_z", "reference", "model", "oof_accuracy",
                                                   "withheld", "issues_found", "top_windows", "flagged_per_class")
                     if k in r.info}
            print(f"  {r.name}: {json.dumps(brief, default=str)}", flush=True)
    print("\n" + markdown(all_rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"argv": sys.argv, "rows_audited": len(clean), "load_seconds": load_seconds,
                                         "results": all_rows, "runs": runs}, indent=2, default=str))
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
