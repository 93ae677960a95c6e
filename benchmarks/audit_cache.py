"""Audit cache and scale-out timings on the CPU (results in docs/benchmarks.md, "Flows").

For each size N (rows of the shared CIFAR-10 train split, class-balanced): audit 90% of the
rows (fills the cache), then time
  grown:  the audit of all N rows (10% new rows),
  cached: the same audit again (unchanged),
  full:   the audit of all N rows with the cache off,
and with --dask, the full audit on a Dask LocalCluster of 2 workers against the thread runner
(wall time, and whether the scores are equal). Times are of the flow call, with Prefect's
ephemeral server already up (a warm-up flow starts it).

    .venv/bin/python benchmarks/audit_cache.py --rows 6000 50000 --detectors outlier
    .venv/bin/python benchmarks/audit_cache.py --rows 6000 --detectors abl --set abl.epochs=2
    .venv/bin/python benchmarks/audit_cache.py --rows 6000 50000 --detectors outlier --dask --only-dask
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CIFAR = Path(__file__).resolve().parents[2] / "shared/data/cifar10/train.parquet"


def write_slice(table: pa.Table, n: int, path: Path) -> Path:
    idx = np.linspace(0, table.num_rows - 1, n).astype(int) if n < table.num_rows else np.arange(table.num_rows)
    pq.write_table(table.take(pa.array(idx)), path)
    return path


def timed(params) -> tuple[float, object]:
    from flows.audit import audit_flow

    start = time.perf_counter()
    summary = audit_flow(params)
    return time.perf_counter() - start, summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[6000])
    ap.add_argument("--detectors", default="outlier")
    ap.add_argument("--set", action="append", default=[], metavar="DET.OPT=VALUE")
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--dask", action="store_true")
    ap.add_argument("--only-dask", action="store_true")
    args = ap.parse_args()

    from flows.commands.audit import parse_sets
    from flows.params import AuditParams

    table = pq.read_table(CIFAR)
    detectors = args.detectors.split(",")
    options = parse_sets(args.set)
    tmp = Path(tempfile.mkdtemp(prefix="vetset-bench-"))
    common = dict(detectors=detectors, detector_options=options, shard_size=args.shard_size, emit_events=False,
                  runs_root=str(tmp / "runs"))
    warm = write_slice(table, 64, tmp / "warm.parquet")
    timed(AuditParams(data=str(warm), detectors=["outlier"], cache=False, runs_root=str(tmp / "runs"),
                      emit_events=False))
    rows = []
    for n in args.rows:
        full_path = write_slice(table, n, tmp / f"full{n}.parquet")
        base_path = tmp / f"base{n}.parquet"
        pq.write_table(pq.read_table(full_path).slice(0, int(n * 0.9)), base_path)
        cache = str(tmp / f"cache{n}")
        if not args.only_dask:
            t_base, _ = timed(AuditParams(data=str(base_path), cache_dir=cache, **common))
            t_grown, s_grown = timed(AuditParams(data=str(full_path), cache_dir=cache, **common))
            t_cached, s_cached = timed(AuditParams(data=str(full_path), cache_dir=cache, **common))
            t_full, _ = timed(AuditParams(data=str(full_path), cache_dir=cache, cache=False, **common))
            reuse = {d: (s_grown.cache[d]["rows_reused"], s_cached.cache[d]["rows_reused"]) for d in detectors}
            rows.append({"rows": n, "full_s": round(t_full, 1), "grown10_s": round(t_grown, 1),
                         "cached_s": round(t_cached, 1), "base90_cold_s": round(t_base, 1),
                         "reused (grown, cached)": reuse})
        if args.dask:
            out = {}
            for runner in ("thread", "dask"):
                params = AuditParams(data=str(full_path), cache=False, cache_dir=cache, task_runner=runner, workers=2,
                                     out=str(tmp / f"{runner}{n}"), **common)
                out[runner], _ = timed(params)
            a, b = (pd.read_parquet(tmp / f"{r}{n}" / "scores.parquet") for r in ("thread", "dask"))
            equal = all(np.array_equal(a[f"{d}_score"], b[f"{d}_score"], equal_nan=True) for d in detectors)
            rows.append({"rows": n, "thread_s": round(out["thread"], 1), "dask_2_workers_s": round(out["dask"], 1),
                         "scores_equal": equal, "flags_equal": bool((a["flagged"] == b["flagged"]).all())})
        for r in rows:
            print(json.dumps(r), flush=True)
        rows.clear()


if __name__ == "__main__":
    main()
