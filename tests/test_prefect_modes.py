"""The CLI works with no Prefect server configured (ephemeral mode) and against a real server
given by PREFECT_API_URL, where the flow run and its artifacts can be read back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pandas as pd
import pyarrow.parquet as pq


def _small(poisoned_cifar, tmp_path):
    pq.write_table(pq.read_table(poisoned_cifar["data"]).slice(0, 150), tmp_path / "small.parquet")
    return str(tmp_path / "small.parquet")


def _run_cli(data, out, env, cwd):
    return subprocess.run([sys.executable, "-m", "flows", "audit", "--data", data, "--detectors", "abl",
                           "--set", "abl.epochs=2", "--out", str(out)], env=env, capture_output=True, text=True, cwd=cwd, timeout=300)


def test_ephemeral_mode_without_any_server(tmp_path, poisoned_cifar):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    proc = _run_cli(_small(poisoned_cifar, tmp_path), tmp_path / "run", env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_parquet(tmp_path / "run" / "scores.parquet")) == 150


def test_against_a_server_from_prefect_api_url(tmp_path, poisoned_cifar, prefect_server):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "home"))
    proc = _run_cli(_small(poisoned_cifar, tmp_path), tmp_path / "run", env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    req = urllib.request.Request(f"{prefect_server}/flow_runs/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    runs = json.load(urllib.request.urlopen(req, timeout=10))
    audits = [r for r in runs if r["state"]["type"] == "COMPLETED"]
    assert audits, runs
    req = urllib.request.Request(f"{prefect_server}/artifacts/filter", data=b"{}", method="POST",
                                 headers={"Content-Type": "application/json"})
    keys = {a["key"] for a in json.load(urllib.request.urlopen(req, timeout=10))}
    assert {"vetset-audit-summary", "vetset-top-flagged"} <= keys
