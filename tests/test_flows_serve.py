"""`vetset serve` against a real `prefect server start`: serve the audit and curate-then-train
deployments, trigger an audit through the REST API, read its state, artifacts and the
vetset.audit.completed event back, and see the alert trigger start curate-then-train."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import yaml

from conftest import REPO, prefect_api, stop_process


def _wait(fn, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_serve_trigger_run_read_state_artifacts_and_event(poisoned_cifar, prefect_server, tmp_path):
    api = prefect_api(prefect_server)  # retries the server's 503 (database busy)
    pq.write_table(pq.read_table(poisoned_cifar["data"]).slice(0, 150), tmp_path / "d.parquet")
    config = {"deployments": [
        {"flow": "audit", "name": "test-audit", "cron": "0 3 * * *",
         "parameters": {"data": str(tmp_path / "d.parquet"), "detectors": ["outlier"], "alert_fraction": 0.05,
                        "runs_root": str(tmp_path / "runs"), "shard_size": 50}},
        {"flow": "curate-then-train", "name": "test-curate", "on_audit_alert": True,
         "parameters": {"epochs": 1, "model": "small_cnn"}},
    ]}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "home"))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows", "serve", "--config", str(tmp_path / "serve.yaml")],
                            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        def deployment(name):
            r = api.get(f"/deployments/name/{name}")
            return r.json() if r.status_code == 200 else None

        audit = _wait(lambda: deployment("audit/test-audit"), 180, "the audit deployment")
        assert audit["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        curate = _wait(lambda: deployment("curate-then-train/test-curate"), 30, "the curate deployment")
        created = api.post(f"/deployments/{audit['id']}/create_flow_run", json={})
        # the server's answer in full when it is not a flow run (seen once in CI: a body without
        # an "id", not reproduced in 2 reruns)
        assert created.status_code in (200, 201), (created.status_code, created.text[:2000])
        run = created.json()

        def finished():
            state = api.get(f"/flow_runs/{run['id']}").json()["state"]
            assert state["type"] not in ("FAILED", "CRASHED"), (state, (tmp_path / "serve.log").read_text()[-3000:])
            return state["type"] == "COMPLETED"

        _wait(finished, 240, "the audit run to complete")
        arts = api.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
        kinds = {a["key"]: a["type"] for a in arts if a["key"]}
        assert kinds == {"vetset-audit-summary": "markdown", "vetset-top-flagged": "table",
                         "vetset-audit-progress": "progress"}
        assert [a["data"] for a in arts if a["key"] == "vetset-audit-progress"] == [100.0]

        def event():
            body = {"filter": {"event": {"name": ["vetset.audit.completed"]},
                               "occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
            events = api.post("/events/filter", json=body).json()["events"]
            return [e for e in events if e["resource"].get("vetset.flow-run-id") == run["id"]]

        (ev,) = _wait(event, 120, "the vetset.audit.completed event")
        p = ev["payload"]
        assert p["rows"] == 150 and p["flagged"] == 15 and abs(p["flagged_fraction"] - 0.1) < 1e-9
        assert p["alert"] is True and ev["resource"]["vetset.alert"] == "true"
        assert len(p["fingerprint"]) == 32 and ev["resource"]["prefect.resource.id"] == f"vetset.dataset.{p['fingerprint']}"
        assert os.path.exists(os.path.join(p["run_dir"], "scores.parquet"))

        def triggered():
            body = {"deployments": {"id": {"any_": [curate["id"]]}}}
            return api.post("/flow_runs/filter", json=body).json()

        (cur,) = _wait(triggered, 180, "the alert trigger to start curate-then-train")
        params = cur["parameters"]["params"]
        assert params["data"] == str(tmp_path / "d.parquet")
        assert params["scores"] == os.path.join(p["run_dir"], "scores.parquet") and params["epochs"] == 1
    finally:
        stop_process(proc, 30)
        log.close()


def test_prefect_yaml_entrypoints_load_and_parameters_validate():
    from prefect.flows import load_flow_from_entrypoint

    from flows.serve import _templated, params_model

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    names = set()
    for dep in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(REPO / dep["entrypoint"]))
        names.add(flow.name)
        model = params_model(flow)
        if "parameters" in dep:
            model(**dep["parameters"]["params"])
        for trig in dep.get("triggers", []):
            assert trig["expect"] == ["vetset.audit.completed"] and trig["match"]["vetset.alert"] == "true"
            assert set(trig["parameters"]["params"]) <= set(model.model_fields)
            assert any(_templated(v) for v in trig["parameters"]["params"].values())
        for sched in dep.get("schedules", []):
            from prefect.client.schemas.schedules import CronSchedule

            CronSchedule(cron=sched["cron"])
    assert names == {"audit", "curate-then-train", "train"}
