"""kill -9 mid-audit, run again: only the unfinished shards are scored, every row once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pyarrow.parquet as pq

from conftest import REPO, start_prefect_server


def _cmd(data, out, cache):
    return [sys.executable, "-m", "flows", "audit", "--data", str(data), "--detectors", "slow_rows",
            "--plugin", "flows_plugin", "--shard-size", "20", "--workers", "1", "--cache-dir", str(cache),
            "--out", str(out)]



def _wait_for_shards(proc, cache, ended: str, n: int = 3, timeout: float = 240) -> None:
    """Until the running audit ``proc`` has written ``n`` shards to ``cache``."""
    deadline = time.time() + timeout
    while len(list(cache.glob("rows/*/*.parquet"))) < n:
        assert proc.poll() is None, ended
        assert time.time() < deadline, "no shards written in time"
        time.sleep(0.2)

def test_kill_9_then_resume_scores_only_unfinished_shards(poisoned_cifar, prefect_server, tmp_path):
    pq.write_table(pq.read_table(poisoned_cifar["data"]).slice(0, 200), tmp_path / "d.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=prefect_server, PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{REPO}",
               VETSET_TEST_LOG=str(tmp_path / "first.log"), VETSET_TEST_DELAY="1.5")
    cache = tmp_path / "cache"
    proc = subprocess.Popen(_cmd(tmp_path / "d.parquet", tmp_path / "run1", cache), env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_shards(proc, cache, "the audit ended before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = pd.concat([pd.read_parquet(f) for f in cache.glob("rows/*/*.parquet")])
    assert 60 <= len(done) < 200 and done["sample_id"].is_unique

    env.update(VETSET_TEST_LOG=str(tmp_path / "second.log"), VETSET_TEST_DELAY="0")
    rerun = subprocess.run(_cmd(tmp_path / "d.parquet", tmp_path / "run2", cache), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    second = (tmp_path / "second.log").read_text().split()
    assert len(second) == len(set(second)) == 200 - len(done)  # only what was not on disk
    assert not set(second) & set(done["sample_id"])
    assert f"slow_rows: {len(done)} rows reused from the cache, {200 - len(done)} scored" in rerun.stdout
    scores = pd.read_parquet(tmp_path / "run2" / "scores.parquet")
    assert len(scores) == 200 and scores["sample_id"].is_unique
    assert scores["slow_rows_score"].notna().all()


def test_server_killed_mid_audit_fails_in_one_line_and_the_rerun_resumes(poisoned_cifar, prefect_server, tmp_path):
    """The Prefect server dies (SIGKILL) after 3 of 10 shards: the audit ends with exit 3 and
    one vetset line saying so (after Prefect's client gives up: one retry here, for time; the
    default 5 retries took 2.5 min by hand), and a rerun against a live server reuses the
    finished shards."""
    pq.write_table(pq.read_table(poisoned_cifar["data"]).slice(0, 200), tmp_path / "d.parquet")
    (tmp_path / "server-home").mkdir()
    server, url, server_log = start_prefect_server(tmp_path / "server-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=url, PREFECT_CLIENT_MAX_RETRIES="1",
               PYTHONPATH=f"{REPO / 'tests'}{os.pathsep}{REPO}", VETSET_TEST_DELAY="1.5")
    cache = tmp_path / "cache"
    try:
        proc = subprocess.Popen(_cmd(tmp_path / "d.parquet", tmp_path / "run1", cache), env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for_shards(proc, cache, "the audit ended before the server could be killed")
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
        _, stderr = proc.communicate(timeout=300)
    finally:
        if server.poll() is None:
            server.kill()
        server_log.close()
    ours = [ln for ln in stderr.splitlines() if ln.startswith("vetset:")]
    assert proc.returncode == 3, stderr[-3000:]
    assert len(ours) == 1 and ours[0].startswith(f"vetset: error: lost the Prefect server at {url}"), ours
    assert not (tmp_path / "run1" / "scores.parquet").exists()  # nothing half-written
    done = len(pd.concat([pd.read_parquet(f) for f in cache.glob("rows/*/*.parquet")]))
    assert 60 <= done <= 200

    env.update(PREFECT_API_URL=prefect_server, VETSET_TEST_DELAY="0")
    rerun = subprocess.run(_cmd(tmp_path / "d.parquet", tmp_path / "run1", cache), env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    reused = int(rerun.stdout.split("slow_rows: ")[1].split(" rows reused")[0])
    assert reused >= done and len(pd.read_parquet(tmp_path / "run1" / "scores.parquet")) == 200
