"""The workflow vetset exists for, run for real: a `prefect server start`, a process work pool
and a worker, the deployments of the repo's own prefect.yaml deployed with `prefect deploy
--all`; the nightly audit deployment run on a clean dataset, whose audit fires nothing, then
on a poisoned one, its completion event firing the curate-then-train deployment through the
trigger in prefect.yaml, which runs to Completed and writes a model whose attack success rate
is far below the undefended model's. The timings are printed (`pytest -s`) and recorded in
docs/flows.md."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cleansers import DEFAULT_DETECTORS
from conftest import REPO, prefect_api, stop_process

POOL = "vetset-pool"  # the work pool prefect.yaml names


def wait_for(fn, timeout: float, what: str, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _digits_split(root: Path) -> dict[str, str]:
    """The demo's dirt (BadNets 10% to class 0 + 5% symmetric noise) on 1,400 of the embedded
    digits, the same 1,400 rows clean, and the other 397 rows as a clean test set."""
    from pipelines.embedded import demo_spec, load_digits_rgb
    from pipelines.parquet_io import write_dataset_parquet
    from pipelines.simulate import simulate, write_simulation

    ds = load_digits_rgb()
    perm = np.random.default_rng(0).permutation(len(ds))
    train, test = ds.subset(np.sort(perm[:1400])), ds.subset(np.sort(perm[1400:]))
    sim = write_simulation(simulate(train, demo_spec()), root / "dirty")
    (root / "clean").mkdir()
    write_dataset_parquet(train, root / "clean" / "data.parquet")
    write_dataset_parquet(test, root / "test.parquet")
    return {"dirty": str(sim["data"]), "trigger": str(sim["trigger"]), "clean": str(root / "clean" / "data.parquet"),
            "test": str(root / "test.parquet")}


def _prefect(args: list[str], env: dict, cwd: Path, timeout: float = 180) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}"
    return done.stdout


def test_scheduled_audit_fires_curate_then_train_on_a_work_pool_and_a_clean_audit_fires_nothing(
        prefect_server, tmp_path):
    from pipelines.loaders import load_dataset
    from trainers.evaluate import evaluate
    from trainers.saved import load_model
    from trainers.train import resolve_training, train_defended

    data = _digits_split(tmp_path)
    api = prefect_api(prefect_server)  # retries the server's 503 (database busy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "home"), VETSET_HOME=str(REPO),
               VETSET_CACHE_DIR=str(tmp_path / "cache"),
               # the worker asks for work every 2 s instead of 10 (docs/flows.md gives both timings)
               PREFECT_WORKER_QUERY_SECONDS="2")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    _prefect(["work-pool", "create", POOL, "--type", "process"], env, tmp_path)
    _prefect(["deploy", "--all"], env, REPO)  # the repo's prefect.yaml, as a user deploys it
    timings["pool + deploy"] = time.perf_counter() - t0

    def deployment(name):
        r = api.get(f"/deployments/name/{name}")
        assert r.status_code == 200, (name, r.status_code, r.text[:500])
        return r.json()

    audit, curate = deployment("audit/vetset-audit"), deployment("curate-then-train/vetset-curate-then-train")
    deployment("train/vetset-train")
    assert [s["schedule"]["cron"] for s in audit["schedules"]] == ["0 3 * * *"]  # the nightly schedule
    assert audit["work_pool_name"] == POOL and curate["work_pool_name"] == POOL

    def runs_of(dep) -> list[dict]:
        return api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [dep["id"]]}}}).json()

    def run_audit(source: str) -> dict:
        # the deployment's parameters with a run's own, as a user overrides them: the default
        # audit less its label model (confident: 60% of a 1,400-row audit's ~80 s on a 2-core
        # AVX2 CPU, twice here), which the demo's test runs (tests/test_audit_flow.py); what
        # this test is about is the deployment, the worker, the event and the trigger
        body = {"parameters": {"params": {"data": source, "runs_root": str(tmp_path / "runs"),
                                          "detectors": [d for d in DEFAULT_DETECTORS if d != "confident"]}}}
        created = api.post(f"/deployments/{audit['id']}/create_flow_run", json=body)
        assert created.status_code in (200, 201), (created.status_code, created.text[:2000])
        return created.json()

    def completed(run_id: str):
        state = api.get(f"/flow_runs/{run_id}").json()["state"]
        assert state["type"] not in ("FAILED", "CRASHED", "CANCELLED"), (state, worker_log.read_text()[-4000:])
        return state["type"] == "COMPLETED"

    def completion_event(run_id: str):
        body = {"filter": {"event": {"name": ["vetset.audit.completed"]},
                           "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
        events = api.post("/events/filter", json=body).json()["events"]
        return [e for e in events if e["resource"].get("vetset.flow-run-id") == run_id]

    worker_log = tmp_path / "worker.log"
    with open(worker_log, "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL],
                                  env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        # 1. a clean dataset first: the audit completes, says clean, and its event starts
        # nothing (checked once the poisoned audit below has run: the trigger then had that
        # whole audit's time, far more than it takes to fire, to start a run it must not)
        t0 = time.perf_counter()
        clean_run = run_audit(data["clean"])
        wait_for(lambda: completed(clean_run["id"]), 300, "the audit of the clean data to complete")
        timings["audit (clean)"] = time.perf_counter() - t0
        (event,) = wait_for(lambda: completion_event(clean_run["id"]), 60, "the clean audit's completion event")
        assert event["payload"]["verdict"]["status"] == "clean" and event["payload"]["alert"] is False
        assert event["resource"]["vetset.alert"] == "false"
        t_clean_event = time.perf_counter()

        # 2. the audit deployment on the poisoned data: dirt found, the alert fires curate-then-train
        t0 = time.perf_counter()
        dirty_run = run_audit(data["dirty"])
        wait_for(lambda: completed(dirty_run["id"]), 300, "the audit of the poisoned data to complete")
        timings["audit (poisoned)"] = time.perf_counter() - t0
        (event,) = wait_for(lambda: completion_event(dirty_run["id"]), 60, "the audit's completion event")
        payload = event["payload"]
        assert payload["alert"] is True and event["resource"]["vetset.alert"] == "true"
        assert payload["verdict"]["status"] == "dirt_found" and payload["verdict"]["backdoor_classes"] == ["0"]  # class names
        t_event = time.perf_counter()
        (cur,) = wait_for(lambda: runs_of(curate), 120, "the alert trigger to start curate-then-train")
        timings["event -> curate run created"] = time.perf_counter() - t_event
        # the one run is the poisoned audit's; the clean audit's event, three times as old as
        # the trigger took to fire here (and at least 15 s), started none
        assert time.perf_counter() - t_clean_event > max(15.0, 3 * timings["event -> curate run created"])
        assert [r["id"] for r in runs_of(curate)] == [cur["id"]], "a clean audit started curate-then-train"
        params = cur["parameters"]["params"]
        assert params["data"] == data["dirty"] and params["defense"] == "curate"
        assert params["scores"] == os.path.join(payload["run_dir"], "scores.parquet")
        wait_for(lambda: completed(cur["id"]), 300, "curate-then-train to complete")
        timings["audit + curate-then-train"] = time.perf_counter() - t0

        # the curated model: written where the trigger said, the backdoor gone
        model_dir = Path(params["out"])
        assert (model_dir / "model.safetensors").is_file() and (model_dir / "metrics.json").is_file()
        test = load_dataset(data["test"])
        curated = evaluate(load_model(model_dir), test, data["trigger"])
        arch, cfg = resolve_training(seed=0)  # what curate-then-train trains with, on every row
        undefended_model, _ = train_defended(load_dataset(data["dirty"]), arch=arch, cfg=cfg, seed=0, log=None)
        undefended = evaluate(undefended_model, test, data["trigger"])
        print(f"\nundefended CA {undefended['clean_acc']:.3f} ASR {undefended['asr']:.3f}; "
              f"curated CA {curated['clean_acc']:.3f} ASR {curated['asr']:.3f}")
        assert undefended["asr"] > 0.5, undefended  # the poisoning works on this data
        assert curated["asr"] < 0.5 * undefended["asr"], (curated, undefended)
        assert curated["clean_acc"] > 0.7, curated
        assert [r["id"] for r in runs_of(curate)] == [cur["id"]]  # and still one run
    finally:
        stop_process(worker, 30)
    print("chain timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


@pytest.fixture(autouse=True)
def _no_litter_in_the_checkout():
    """`prefect deploy` runs in the checkout; it must leave nothing there."""
    def untracked():
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                             capture_output=True, text=True)
        return set(out.stdout.splitlines()) if out.returncode == 0 else None

    before = untracked()
    yield
    after = untracked()
    if before is not None and after is not None:
        assert after <= before, f"new files in the checkout: {sorted(after - before)}"
