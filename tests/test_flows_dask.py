"""Shards on a Dask LocalCluster of 2 workers give the same result as the thread runner."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("prefect_dask")


def test_dask_local_cluster_equals_threads(prefect_harness, poisoned_cifar, tmp_path):
    from flows.audit import audit_flow
    from flows.params import AuditParams

    pq.write_table(pq.read_table(poisoned_cifar["data"]).slice(0, 300), tmp_path / "d.parquet")
    frames = {}
    for runner in ("thread", "dask"):
        params = AuditParams(data=str(tmp_path / "d.parquet"), detectors=["outlier"], out=str(tmp_path / runner),
                             cache=False, cache_dir=str(tmp_path / f"cache-{runner}"), shard_size=50,
                             task_runner=runner, workers=2, emit_events=False)
        state = audit_flow(params, return_state=True)
        assert state.is_completed(), state.message
        assert state.result().cache["outlier"]["shards"] == 6
        frames[runner] = pd.read_parquet(tmp_path / runner / "scores.parquet")
    a, b = frames["thread"], frames["dask"]
    assert list(a["sample_id"]) == list(b["sample_id"])
    np.testing.assert_array_equal(a["outlier_score"].to_numpy(), b["outlier_score"].to_numpy())
    assert (a["flagged"] == b["flagged"]).all()
