"""Faults at the output end of an audit: an unwritable folder, a full disk while writing, two
audits writing one --out. Each is one line on stderr, a non-zero exit, and a run directory
that holds a whole run or what it held before, never a mix."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from conftest import REPO


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def _litter(parent):
    return [p.name for p in parent.rglob("*") if p.name.endswith((".partial", ".tmp"))]


@pytest.mark.parametrize("case", ["parent_is_a_file", "out_is_a_file", "read_only_fs"])
def test_unwritable_output_is_one_line_before_any_work(tmp_path, case):
    (tmp_path / "f").write_text("x")
    out = {"parent_is_a_file": tmp_path / "f" / "run", "out_is_a_file": tmp_path / "f",
           "read_only_fs": "/sys/vetset-run"}[case]
    if case == "read_only_fs" and (not os.path.isdir("/sys") or _sys_writable()):
        pytest.skip("no read-only /sys here")
    done = subprocess.run([sys.executable, "-m", "flows", "audit", "--data", "embedded:digits", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vetset: error: cannot write the run to"), done.stderr


def _sys_writable() -> bool:
    try:
        os.mkdir("/sys/vetset-probe")
    except OSError:
        return False
    os.rmdir("/sys/vetset-probe")
    return True


def test_disk_full_while_writing_leaves_the_run_directory_as_it_was(prefect_harness, poisoned_cifar, tmp_path,
                                                                    monkeypatch, capsys):
    from flows.cli import run

    data = tmp_path / "d.parquet"
    pq.write_table(pq.read_table(poisoned_cifar["data"]).slice(0, 120), data)
    out = tmp_path / "run"
    def argv(target):
        return ["audit", "--data", str(data), "--detectors", "outlier", "--no-cache", "--out", str(target)]

    assert run(argv(out) + ["--truth", poisoned_cifar["truth"]]) == 0  # an earlier, whole run (with metrics.json)
    before = _snapshot(out)
    assert {"scores.parquet", "flagged.parquet", "metrics.json", "manifest.json", "report.html"} <= set(before)
    capsys.readouterr()

    real_write = pq.write_table

    def full_disk(table, where, *args, **kwargs):
        if ".flagged.parquet." in str(where):  # the second table of the run: the first is written
            with open(where, "wb") as f:
                f.write(b"PAR1 half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(where))
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", full_disk)
    for target in (out, tmp_path / "fresh"):
        code = run(argv(target))
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert "No space left on device" in err[0] and str(target) in err[0]
    assert _snapshot(out) == before  # the earlier run, byte for byte
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())
    assert _litter(tmp_path) == []

    monkeypatch.setattr(pq, "write_table", real_write)  # disk freed: a run without --truth replaces the set
    assert run(argv(out)) == 0
    after = _snapshot(out)
    assert "truth.parquet" in before and "truth.parquet" not in after  # no file of the old run stays
    assert after["scores.parquet"] != before["scores.parquet"] or after["manifest.json"] != before["manifest.json"]


def test_a_second_audit_of_the_same_out_is_refused_while_the_first_runs(prefect_server, poisoned_cifar, tmp_path):
    pq.write_table(pq.read_table(poisoned_cifar["data"]).slice(0, 120), tmp_path / "d.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=prefect_server,
               PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{REPO}", VETSET_TEST_DELAY="4")  # 6 shards: 24 s, while the second audit starts
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "flows", "audit", "--data", str(tmp_path / "d.parquet"), "--detectors", "slow_rows",
           "--plugin", "flows_plugin", "--shard-size", "20", "--workers", "1", "--no-cache", "--out", str(out)]
    first = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = tmp_path / ".run.lock"
    deadline = time.time() + 180
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.time() < deadline, "the first audit never took the lock"
        time.sleep(0.2)
    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert first.poll() is None, "the first audit ended before the second was refused; the test proves nothing"
    lines = [ln for ln in second.stderr.strip().splitlines() if "vetset:" in ln]
    assert second.returncode == 2 and lines == [
        f"vetset: error: another audit (pid {first.pid}) is writing {out}; wait for it to finish or choose another --out"
    ], second.stderr[-2000:]
    stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr[-2000:]
    scores = pq.read_table(out / "scores.parquet").to_pandas()
    assert len(scores) == 120 and scores["sample_id"].is_unique
    # the lock went with the first process: the same command now runs
    env["VETSET_TEST_DELAY"] = "0"
    again = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
