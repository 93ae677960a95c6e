"""Scoring cache, shards, retries and failure of the audit flow (real Prefect, test harness)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import flows_plugin  # noqa: F401  (registers slow_rows, flaky_rows, broken_rows)


def _params(data, tmp_path, out, **kw):
    from flows.params import AuditParams

    return AuditParams(data=str(data), out=str(tmp_path / out), cache_dir=str(tmp_path / "cache"),
                       emit_events=False, **kw)


def _cache(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["config"]["cache"]


@pytest.fixture
def sliced(poisoned_cifar, tmp_path):
    table = pq.read_table(poisoned_cifar["data"])
    pq.write_table(table.slice(0, 360), tmp_path / "base.parquet")
    pq.write_table(table.slice(0, 400), tmp_path / "grown.parquet")  # 40 new rows (10%)
    return tmp_path / "base.parquet", tmp_path / "grown.parquet"


def test_row_cache_reuses_unchanged_and_scores_only_new_rows(prefect_harness, sliced, tmp_path):
    from flows.audit import audit_flow

    base, grown = sliced
    first = audit_flow(_params(base, tmp_path, "r1", detectors=["outlier"], shard_size=100))
    assert {k: v for k, v in first.cache["outlier"].items() if k != "cache_key"} == {
        "cache": "per-row", "rows_reused": 0, "rows_computed": 360, "shards": 4}
    again = audit_flow(_params(base, tmp_path, "r2", detectors=["outlier"], shard_size=100))
    assert again.cache["outlier"]["rows_reused"] == 360 and again.cache["outlier"]["rows_computed"] == 0
    bigger = audit_flow(_params(grown, tmp_path, "r3", detectors=["outlier"], shard_size=100))
    assert bigger.cache["outlier"]["rows_reused"] == 360 and bigger.cache["outlier"]["rows_computed"] == 40
    assert _cache(tmp_path / "r3")["outlier"]["rows_computed"] == 40  # said in the manifest too

    s1, s2 = (pd.read_parquet(tmp_path / r / "scores.parquet") for r in ("r1", "r2"))
    np.testing.assert_array_equal(s1["outlier_score"], s2["outlier_score"])
    s3 = pd.read_parquet(tmp_path / "r3" / "scores.parquet")
    assert len(s3) == 400 and s3["sample_id"].is_unique
    np.testing.assert_allclose(s3["outlier_score"][:360], s1["outlier_score"])
    fresh = audit_flow(_params(grown, tmp_path, "r4", detectors=["outlier"], cache=False))
    assert fresh.cache["outlier"]["rows_reused"] == 0
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "r4" / "scores.parquet")["outlier_score"], s3["outlier_score"])


def test_model_based_detector_is_cached_whole_and_recomputed_when_data_grows(prefect_harness, sliced, tmp_path):
    from flows.audit import audit_flow

    base, grown = sliced
    opts = {"abl": {"epochs": 1}}
    first = audit_flow(_params(base, tmp_path, "a1", detectors=["abl"], detector_options=opts))
    assert first.cache["abl"]["rows_reused"] == 0 and first.cache["abl"]["cache"] == "whole"
    again = audit_flow(_params(base, tmp_path, "a2", detectors=["abl"], detector_options=opts))
    assert again.cache["abl"]["rows_reused"] == 360 and again.cache["abl"]["rows_computed"] == 0
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "a1" / "scores.parquet")["abl_score"],
                                  pd.read_parquet(tmp_path / "a2" / "scores.parquet")["abl_score"])
    bigger = audit_flow(_params(grown, tmp_path, "a3", detectors=["abl"], detector_options=opts))
    assert bigger.cache["abl"]["rows_reused"] == 0 and bigger.cache["abl"]["rows_computed"] == 400
    assert "depend on every row" in _cache(tmp_path / "a3")["abl"]["cache_note"]


def test_failing_shard_retries_then_succeeds(prefect_harness, sliced, tmp_path):
    from flows.audit import audit_flow

    base, _ = sliced
    flows_plugin.ATTEMPTS.clear()
    state = audit_flow(_params(base, tmp_path, "f1", detectors=["flaky_rows"], shard_size=120, shard_retries=1),
                       return_state=True)
    assert state.is_completed(), state.message
    assert sorted(flows_plugin.ATTEMPTS.values()) == [2, 2, 2]  # each of 3 shards failed once, then passed
    assert len(pd.read_parquet(tmp_path / "f1" / "scores.parquet")) == 360


def test_shard_that_keeps_failing_fails_the_run_and_keeps_the_rest(prefect_harness, sliced, tmp_path):
    from flows.audit import audit_flow
    from flows.shards import RowStore

    base, _ = sliced
    params = _params(base, tmp_path, "b1", detectors=["broken_rows"], detector_options={"broken_rows": {"broken": 150}},
                     shard_size=100, shard_retries=1)
    state = audit_flow(params, return_state=True)
    assert state.is_failed()
    assert "1 of 4 shard(s) failed" in state.message
    assert not (tmp_path / "b1" / "scores.parquet").exists()
    files = list((tmp_path / "cache" / "rows").glob("broken_rows-*/*.parquet"))
    assert len(files) == 3  # the three good shards are kept
    kept = pd.concat([pd.read_parquet(f) for f in files])
    assert len(kept) == 260 and kept["key"].is_unique
    assert RowStore(files[0].parent).lookup(kept["key"].to_numpy())[0].all()


PLUGIN = '''
import numpy as np
from dataclasses import dataclass
from cleansers.base import DETECTORS, Detector, DetectorResult


@DETECTORS.register("edited_rows")
class Edited(Detector):
    name = "edited_rows"

    @dataclass
    class Config:
        pass

    def score(self, data, ctx):
        s = data.images.reshape(len(data), -1).mean(1) * {factor}
        return DetectorResult(self.name, s, np.zeros(len(data), bool))
'''


def test_a_change_to_a_detectors_code_misses_the_cache(prefect_harness, sliced, tmp_path, monkeypatch):
    """Keys carry the source hash of the detector's module: the old algorithm's scores are
    never served after its code changed (same name, same config, same data)."""
    import importlib
    import sys

    from flows.audit import audit_flow

    base, _ = sliced
    plugin = tmp_path / "plugins" / "vetset_edited_plugin.py"
    plugin.parent.mkdir()
    plugin.write_text(PLUGIN.format(factor="1.0"))
    monkeypatch.syspath_prepend(str(plugin.parent))
    if "vetset_edited_plugin" not in sys.modules:
        importlib.import_module("vetset_edited_plugin")
    first = audit_flow(_params(base, tmp_path, "e1", detectors=["edited_rows"]))
    again = audit_flow(_params(base, tmp_path, "e2", detectors=["edited_rows"]))
    assert first.cache["edited_rows"]["rows_reused"] == 0 and again.cache["edited_rows"]["rows_reused"] == 360
    plugin.write_text(PLUGIN.format(factor="2.0"))  # a new version of the detector
    edited = audit_flow(_params(base, tmp_path, "e3", detectors=["edited_rows"]))
    assert edited.cache["edited_rows"]["rows_reused"] == 0 and edited.cache["edited_rows"]["rows_computed"] == 360
    keys = {json.loads((tmp_path / r / "manifest.json").read_text())["config"]["cache"]["edited_rows"]["cache_key"]
            for r in ("e1", "e2", "e3")}
    assert len(keys) == 2
