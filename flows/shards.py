"""Shard persistence: every finished shard's scores go to their own Parquet file, written
atomically (temporary name + rename), so that a killed process loses only the shards that
were still running. The same files are the per-row score cache: a row is looked up by its
key (``sample_id`` + content hash, see caching.row_keys) across every shard file of the
store, so an unchanged audit reuses every row and a grown dataset scores only its new rows.

Layout (under the audit's cache directory):
    rows/<detector key>/<shard hash>.parquet            row-independent detectors
    whole/<whole key>/rows/<shard hash>.parquet         sharded model-based detectors (resume only)
No Prefect here, so that scripts can use it too."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.atomic import atomic_write_table


@dataclass
class RowStore:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def files(self) -> list[Path]:
        return sorted(self.root.glob("*.parquet")) if self.root.exists() else []

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, scores) for ``keys``; scores are NaN where not found. A shard file that
        cannot be read (it cannot be half-written, but a disk can fail) is skipped."""
        known: dict[str, float] = {}
        for path in self.files():
            try:
                table = pq.read_table(path, columns=["key", "score"])
            except Exception:
                continue
            known.update(zip(table.column("key").to_pylist(), table.column("score").to_numpy(zero_copy_only=False)))
        scores = np.array([known.get(k, np.nan) for k in keys], dtype=np.float64)
        found = np.array([k in known for k in keys], dtype=bool)
        return found, scores

    @staticmethod
    def shard_name(keys: np.ndarray) -> str:
        h = hashlib.blake2b(digest_size=12)
        for k in keys:
            h.update(str(k).encode())
            h.update(b"\x1e")
        return h.hexdigest()

    def write(self, keys: np.ndarray, sample_ids: np.ndarray, scores: np.ndarray) -> Path:
        """Persist one finished shard (atomic). The name is a hash of its keys: rewriting the
        same shard replaces it."""
        scores = np.asarray(scores, dtype=np.float64)
        if len(scores) != len(keys):
            raise ValueError(f"shard has {len(keys)} rows but {len(scores)} scores")
        table = pa.table({"key": pa.array([str(k) for k in keys]),
                          "sample_id": pa.array([str(s) for s in sample_ids]),
                          "score": pa.array(scores)})
        return atomic_write_table(table, self.root / f"{self.shard_name(keys)}.parquet")


def plan_shards(todo: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """Split the positions still to score into shards of at most ``shard_size``."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    return [todo[i:i + shard_size] for i in range(0, len(todo), shard_size)]
