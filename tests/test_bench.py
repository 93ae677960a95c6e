"""`vetset bench` (cleansers/bench.py, flows/bench.py): the cells of the matrix, each cached
under a hash of its full config; a run killed with SIGKILL resumes with only the missing
cells; bench.parquet / bench.md / bench.png; one-line input errors. Real CIFAR-10 rows, real
training (1 epoch on 400 rows), the cheap ``outlier`` detector for the audits."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import REPO, cifar_slice


@pytest.fixture(scope="module")
def bench_data(tmp_path_factory, cifar_dir) -> Path:
    folder = tmp_path_factory.mktemp("bench-data")
    pq.write_table(cifar_slice(400), folder / "train.parquet")
    pq.write_table(cifar_slice(200, "test"), folder / "test.parquet")
    return folder


def _config(data: Path, out: Path, **kw):
    from cleansers.bench import BenchConfig

    base = dict(data=str(data), out=str(out), attacks=("badnets",), rates=(0.1,), seeds=(0,), detectors=("outlier",),
                defenses=("none", "curate"), purifiers=(), epochs=1, device="cpu")
    return BenchConfig(**{**base, **kw})


def test_cells_are_listed_and_keyed_by_their_whole_config(bench_data, tmp_path):
    from cleansers.bench import list_cells

    cfg = _config(bench_data, tmp_path, attacks=("badnets", "blended"), rates=(0.05, 0.1), seeds=(0, 1),
                  defenses=("none", "curate"), purifiers=("ft",))
    cells = list_cells(cfg)
    assert len(cells) == 2 * 2 * 2 * 4
    assert [(c.kind, c.method) for c in cells[:4]] == [("detect", "audit"), ("defense", "none"),
                                                      ("defense", "curate"), ("purify", "ft")]
    assert {(c.attack, c.rate, c.seed) for c in cells} == {(a, r, s) for a in ("badnets", "blended")
                                                           for r in (0.05, 0.1) for s in (0, 1)}
    assert len({c.key for c in cells}) == len(cells)

    def keys(**kw):
        return {(c.kind, c.method): c.key for c in list_cells(dataclasses.replace(cfg, attacks=("badnets",),
                                                                                    rates=(0.1,), seeds=(0,), **kw))}

    same = keys()
    assert keys() == same  # deterministic
    more_epochs = keys(epochs=2)  # training changes: every trained cell is a new one, the audit is not
    assert more_epochs[("detect", "audit")] == same[("detect", "audit")]
    assert all(more_epochs[k] != same[k] for k in [("defense", "none"), ("defense", "curate"), ("purify", "ft")])
    option = keys(detector_options={"outlier": {"patch": 4}})  # the audit changes: detect and curate
    assert option[("detect", "audit")] != same[("detect", "audit")]
    assert option[("defense", "curate")] != same[("defense", "curate")]
    assert option[("defense", "none")] == same[("defense", "none")]
    assert keys(purifier_options={"ft": {"epochs": 1}})[("purify", "ft")] != same[("purify", "ft")]


def _bench_command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cleansers.bench", "--data", str(data), "--attacks", "badnets", "--rates", "0.1",
            "--seeds", "0", "--detectors", "outlier", "--defenses", "none,curate", "--epochs", "1",
            "--device", "cpu", "--out", str(out)]


def test_killed_run_resumes_with_only_the_missing_cells(bench_data, tmp_path):
    from cleansers.bench import list_cells, run_bench

    out = tmp_path / "bench"
    cells_dir = out / "cells"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(_bench_command(bench_data, out), cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and not list(cells_dir.glob("*.json")):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    first = {p.name: p.stat().st_mtime_ns for p in cells_dir.glob("*.json")}
    total = len(list_cells(_config(bench_data, out)))
    assert total == 3 and 1 <= len(first) < total  # killed after the first cell, before the last
    assert not (out / "bench.parquet").exists()

    done = subprocess.run(_bench_command(bench_data, out), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("cell ")]
    assert len(lines) == total
    assert sum(line.endswith(": cached") for line in lines) == len(first)
    assert f"bench: {total} cells, {total - len(first)} run, {len(first)} cached" in done.stdout
    assert any("defense curate: CA" in line and "ASR" in line for line in lines)
    for name, mtime in first.items():  # the cells of the killed run were read, not run again
        assert (cells_dir / name).stat().st_mtime_ns == mtime
    assert len(list(cells_dir.glob("*.json"))) == total

    frame = pd.read_parquet(out / "bench.parquet")
    assert len(frame) == 2 + 2  # detect: outlier + fused; one row per defense
    assert list(frame["kind"]) == ["detect", "detect", "defense", "defense"]
    defense = frame[frame["kind"] == "defense"].set_index("method")
    assert defense[["ca", "asr", "ra"]].notna().all().all()
    assert defense[["ca", "asr"]].apply(lambda s: s.between(0, 1)).all().all()
    assert pd.isna(defense.loc["none", "der"]) and 0 <= defense.loc["curate", "der"] <= 1
    assert defense.loc["none", "published"] == "91.32/95.03"  # BackdoorBench, beside ours at 10%
    detect = frame[frame["kind"] == "detect"].set_index("method")
    assert detect.loc["fused", ["tpr", "fpr", "f1", "auroc"]].notna().all()
    md = (out / "bench.md").read_text()
    assert "## Detectors" in md and "## In-training defenses" in md and "| badnets | 0.1 | 0 | curate |" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a changed option is a different cell: it runs, the stored ones stay as they were
    changed = run_bench(_config(bench_data, out, detectors=(), defenses=("none",), epochs=2), log=lambda s: None)
    assert (changed.ran, changed.cached) == (1, 0)
    assert len(list(cells_dir.glob("*.json"))) == total + 1
    again = run_bench(_config(bench_data, out, detectors=(), defenses=("none",), epochs=2), log=lambda s: None)
    assert (again.ran, again.cached) == (0, 1)
    assert len(pd.read_parquet(out / "bench.parquet")) == 1


@pytest.mark.parametrize("argv, message", [
    (["--data", "{missing}"], "no such folder"),
    (["--attacks", "badnets,magic"], "unknown attack 'magic'"),
    (["--rates", "0.1,1.5"], "poisoning rate 1.5 is out of range"),
    (["--defenses", "none,shield"], "unknown defense 'shield'"),
    (["--purifiers", "wash"], "unknown purification method 'wash'"),
    (["--detectors", "", "--defenses", "curate"], "curate needs --detectors"),
    (["--defense-option", "pdb.nonsense=1"], "nonsense"),
])
def test_bad_input_is_one_line_and_a_nonzero_exit(bench_data, tmp_path, capsys, argv, message):
    from flows.cli import run

    argv = [a.replace("{missing}", str(tmp_path / "nope")) for a in argv]
    if "--data" not in argv:
        argv = ["--data", str(bench_data)] + argv
    code = run(["bench", *argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vetset: error: ") and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_prefect_flow_runs_each_missing_cell_as_a_task(prefect_harness, bench_data, tmp_path, capsys):
    from flows.cli import run

    out = tmp_path / "flow"
    argv = ["bench", "--data", str(bench_data), "--attacks", "badnets", "--detectors", "outlier", "--defenses",
            "curate", "--epochs", "1", "--device", "cpu", "--out", str(out)]
    assert run(argv) == 0
    assert "cells: 2 (2 run, 0 cached)" in capsys.readouterr().out
    assert len(pd.read_parquet(out / "bench.parquet")) == 2 + 1
    assert run(argv) == 0
    assert "cells: 2 (0 run, 2 cached)" in capsys.readouterr().out
