"""The audit end to end through Prefect's test harness (a real temporary server), and the
CLI's handling of bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cifar_slice

FAST_ABL = {"abl": {"epochs": 4, "cut": "ratio"}}  # a fixed share: the contract has flags to check


def _artifacts(flow_run_id) -> list[dict]:
    """The flow run's artifacts, read back from the server's REST API."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_audit_flow_writes_the_contract(prefect_harness, poisoned_cifar, tmp_path):
    from flows.audit import audit_flow
    from flows.params import AuditParams

    out = tmp_path / "run"
    params = AuditParams(data=poisoned_cifar["data"], truth=poisoned_cifar["truth"], detectors=["abl"],
                         detector_options=FAST_ABL, out=str(out))
    state = audit_flow(params, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.rows == 600

    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 600 and scores["sample_id"].is_unique
    for col in ("sample_id", "index", "label", "abl_score", "abl_flag", "dirty_score", "flagged", "is_backdoor",
                "is_label_issue", "reasons", "suggested_label"):
        assert col in scores.columns, col
    assert scores["abl_flag"].sum() > 0
    flagged = pd.read_parquet(out / "flagged.parquet")
    assert len(flagged) == scores["flagged"].sum()
    assert flagged["dirty_score"].is_monotonic_decreasing
    assert (flagged["reasons"].str.len() > 0).all()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows"]["in"] == manifest["rows"]["out"] == 600
    assert manifest["dataset"]["fingerprint"] and manifest["versions"]["prefect"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["detection"]) == {"abl", "fused"}
    assert metrics["detection"]["abl"]["poisoned"]["n_dirty"] == 60
    assert metrics["detection"]["abl"]["noisy"]["n_dirty"] == 30
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["rows"] == 600 and verdict["status"] in ("dirt_found", "clean") and verdict["checked"]
    assert verdict["flagged"] == scores["flagged"].sum() == summary.flagged
    assert summary.verdict["headline"] == verdict["headline"]
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "Against the truth table" in html
    assert 'id="verdict"' in html and verdict["headline"].split(" (")[0][:40] in html
    assert (out / "report.md").exists() and (out / "truth.parquet").exists()
    assert not list(out.glob(".*.tmp"))

    kinds = {a["key"]: a["type"] for a in _artifacts(state.state_details.flow_run_id)}
    assert kinds == {"vetset-audit-summary": "markdown", "vetset-top-flagged": "table",
                     "vetset-audit-progress": "progress"}


def test_unreadable_rows_flow_through_flagged(prefect_harness, poisoned_cifar, tmp_path):
    from flows.audit import audit_flow
    from flows.params import AuditParams

    table = pq.read_table(poisoned_cifar["data"]).slice(0, 200)
    images = table.column("image").to_pylist()
    for i, junk in ((3, b"not an image"), (50, b""), (120, images[120]["bytes"][:40])):
        images[i] = {"bytes": junk, "path": images[i]["path"]}
    table = table.set_column(1, "image", pa.array(images, table.schema.field("image").type))
    pq.write_table(table, tmp_path / "broken.parquet")

    summary = audit_flow(AuditParams(data=str(tmp_path / "broken.parquet"), detectors=["abl"],
                                     detector_options=FAST_ABL, out=str(tmp_path / "run")))
    assert summary.rows == 200 and summary.unreadable == 3
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    bad = scores[scores["is_unreadable"]]
    assert bad["index"].tolist() == [3, 50, 120]
    assert bad["flagged"].all() and (bad["reasons"] == "unreadable").all() and bad["abl_score"].isna().all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["rows"]["unreadable"] == 3 and manifest["rows"]["out"] == 200


def test_demo_prints_tables_report_and_metrics(prefect_harness, tmp_path, capsys):
    from flows.cli import run

    quick = [f"{d}.epochs=6" for d in ("agpd", "dynamics", "confident", "sentinet")]
    assert run(["demo", "--out", str(tmp_path / "demo"), *[a for q in quick for a in ("--set", q)]]) == 0
    out = capsys.readouterr().out
    assert "verdict: Likely backdoor:" in out and "class 0" in out
    assert "report:" in out and "scores:" in out and "fused" in out and "TPR" in out
    scores = pd.read_parquet(tmp_path / "demo" / "audit" / "scores.parquet")
    assert len(scores) == 1797
    metrics = json.loads((tmp_path / "demo" / "audit" / "metrics.json").read_text())
    assert metrics["detection"]["fused"]["poisoned"]["n_dirty"] == 180
    # the verdict names class 0 and flags its patch-trigger rows; few clean rows flagged
    # (measured over 5 seeds x 1/2 threads in the digits tests; the demo itself: poisoned TPR
    # 0.994, FPR 0)
    verdict = json.loads((tmp_path / "demo" / "audit" / "verdict.json").read_text())
    assert verdict["backdoor_classes"] == ["0"], verdict["findings"]
    assert metrics["detection"]["fused"]["poisoned"]["tpr"] >= 0.9, metrics["detection"]["fused"]
    assert metrics["detection"]["fused"]["all"]["fpr"] <= 0.02
    # the grid is not one detector's: the poisoned rows are among its first tiles
    html = (tmp_path / "demo" / "audit" / "report.html").read_text()
    first = html.split('<figure class="tile"')[1:9]
    assert any("sentinet" in tile for tile in first)
    report = (tmp_path / "demo" / "audit" / "report.md").read_text()
    assert "## Verdict" in report and "| finding |" in report


def _vetset(*args, cwd):
    return subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("case", ["missing", "wrong_schema", "label_range", "bad_truth"])
def test_cli_bad_input_one_line_nonzero_nothing_written(tmp_path, poisoned_cifar, case):
    data, truth = poisoned_cifar["data"], None
    if case == "missing":
        data = str(tmp_path / "nope.parquet")
    elif case == "wrong_schema":
        pq.write_table(pa.table({"pixels": [b"x"], "label": [0]}), tmp_path / "w.parquet")
        data = str(tmp_path / "w.parquet")
    elif case == "label_range":
        t = pq.read_table(data).slice(0, 30)
        labels = np.asarray(t.column("label").to_pylist())
        labels[5] = 10
        pq.write_table(t.set_column(2, "label", pa.array(labels, pa.int64())), tmp_path / "r.parquet")
        data = str(tmp_path / "r.parquet")
    elif case == "bad_truth":
        truth = str(tmp_path / "missing-truth.parquet")
    out = tmp_path / "out"
    args = ["audit", "--data", data, "--out", str(out)] + (["--truth", truth] if truth else [])
    proc = _vetset(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vetset: error:"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not out.exists()


def test_cli_rejects_unknown_detector_and_option(tmp_path, poisoned_cifar):
    proc = _vetset("audit", "--data", poisoned_cifar["data"], "--detectors", "abl,nosuch", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown detector(s) nosuch" in proc.stderr
    proc = _vetset("audit", "--data", poisoned_cifar["data"], "--detectors", "abl", "--set", "abl.nonsense=1",
                   cwd=tmp_path)
    assert proc.returncode == 2 and "abl.nonsense: unknown option" in proc.stderr


def test_trusted_set_reaches_the_detectors_and_keys_the_cache(prefect_harness, poisoned_cifar, tmp_path, cifar_dir):
    from flows.audit import audit_flow
    from flows.params import AuditParams

    pq.write_table(cifar_slice(40, "test"), tmp_path / "trusted.parquet")
    base = dict(data=poisoned_cifar["data"], detectors=["trusted_probe"], plugins=["flows_plugin"],
                cache_dir=str(tmp_path / "cache"))
    audit_flow(AuditParams(**base, trusted=str(tmp_path / "trusted.parquet"), out=str(tmp_path / "a")))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    probe = manifest["detectors"]["trusted_probe"]
    assert probe["n_trusted"] == 40 and probe["trusted_classes"][0] == "airplane"
    # another trusted set is another model-based result: not served from the first one's cache
    pq.write_table(cifar_slice(20, "test", offset=1), tmp_path / "trusted2.parquet")
    audit_flow(AuditParams(**base, trusted=str(tmp_path / "trusted2.parquet"), out=str(tmp_path / "b")))
    probe2 = json.loads((tmp_path / "b" / "manifest.json").read_text())["detectors"]["trusted_probe"]
    assert probe2["n_trusted"] == 20 and probe2["rows_reused"] == 0


def test_a_deployment_run_with_a_model_not_on_disk_fails_before_any_detector_runs(prefect_harness, poisoned_cifar,
                                                                                  tmp_path, monkeypatch):
    """A deployment's run has no CLI to check its options first: the flow checks every
    detector's (Detector.check) before it loads the data or runs the first detector."""
    from cleansers.base import DETECTORS
    from flows.audit import audit_flow
    from flows.params import AuditParams
    from pipelines.errors import VetsetError

    ran = []
    monkeypatch.setattr(DETECTORS.get("abl"), "score", lambda self, data, ctx: ran.append("abl"))
    params = AuditParams(data=poisoned_cifar["data"], detectors=["abl", "vdc"], out=str(tmp_path / "out"),
                         detector_options={"vdc": {"model": str(tmp_path / "no-such-model")}})
    with pytest.raises(VetsetError, match="no such model folder"):
        audit_flow(params)
    assert ran == [] and not (tmp_path / "out").exists()


def test_cli_rejects_a_trusted_set_with_other_classes(tmp_path, poisoned_cifar):
    pq.write_table(pa.table({"image": pq.read_table(poisoned_cifar["data"]).column("image").slice(0, 5),
                             "label": pa.array([0, 1, 0, 1, 0], pa.int64())}), tmp_path / "t.parquet")
    proc = _vetset("audit", "--data", poisoned_cifar["data"], "--trusted", str(tmp_path / "t.parquet"),
                   "--detectors", "outlier", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2 and "--trusted" in proc.stderr and "differ" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("vetset: error:")
    assert not (tmp_path / "out").exists()
