"""VDC answer cache: one row per (image hash, question, model) in Parquet, so that a re-audit
asks the model only about rows (or questions) it has not seen. Append-only: each run adds one
part file (written atomically) under ``<cache_dir>/<model hash>/``."""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.atomic import atomic_write_table

COLUMNS = ("image_hash", "question", "kind", "model", "answer", "p_yes")
DEFAULT_CACHE_DIR = "~/.cache/vetset/vdc"


class AnswerCache:
    def __init__(self, root: str | os.PathLike | None, model_key: str):
        self.model_key = model_key
        self.dir = None
        if root:
            slug = hashlib.blake2b(model_key.encode(), digest_size=8).hexdigest()
            self.dir = Path(os.path.expanduser(str(root))) / slug
        self._answers: dict[tuple[str, str], tuple[str, float]] = {}
        self._loaded = False

    def load(self) -> "AnswerCache":
        if self.dir is not None and self.dir.exists():
            parts = sorted(self.dir.glob("part-*.parquet"))
            if parts:
                frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
                frame = frame[frame["model"] == self.model_key]
                for h, q, a, p in zip(frame["image_hash"], frame["question"], frame["answer"], frame["p_yes"]):
                    self._answers[(h, q)] = (a, float(p))
        self._loaded = True
        return self

    def get(self, image_hash: str, question: str) -> tuple[str, float] | None:
        return self._answers.get((image_hash, question))

    def __len__(self) -> int:
        return len(self._answers)

    def add(self, records: list[tuple[str, str, str, str, float]]) -> Path | None:
        """Store (image_hash, question, kind, answer, p_yes) records; write one part file."""
        if not records:
            return None
        for h, q, _, a, p in records:
            self._answers[(h, q)] = (a, float(p))
        if self.dir is None:
            return None
        cols = list(zip(*records))
        table = pa.table({
            "image_hash": pa.array(cols[0], pa.string()),
            "question": pa.array(cols[1], pa.string()),
            "kind": pa.array(cols[2], pa.string()),
            "model": pa.array([self.model_key] * len(records), pa.string()),
            "answer": pa.array(cols[3], pa.string()),
            "p_yes": pa.array(np.asarray(cols[4], dtype=np.float64)),
        })
        return atomic_write_table(table, self.dir / f"part-{uuid.uuid4().hex}.parquet")
