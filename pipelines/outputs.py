"""The files of one audit run (see DESIGN.md, "The data contract"), all written atomically."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa

from .atomic import atomic_write_json, atomic_write_table
from .dataset import ImageDataset

SCORES = "scores.parquet"
FLAGGED = "flagged.parquet"
TRUTH = "truth.parquet"
METRICS = "metrics.json"
MANIFEST = "manifest.json"


@dataclass
class RunPaths:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    scores = property(lambda self: self.root / SCORES)
    flagged = property(lambda self: self.root / FLAGGED)
    truth = property(lambda self: self.root / TRUTH)
    metrics = property(lambda self: self.root / METRICS)
    manifest = property(lambda self: self.root / MANIFEST)
    report_html = property(lambda self: self.root / "report.html")
    report_md = property(lambda self: self.root / "report.md")


def new_run_id(ds: ImageDataset) -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{ds.fingerprint[:8]}"


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def write_scores(frame: pd.DataFrame, paths: RunPaths) -> None:
    """scores.parquet (every row) and flagged.parquet (flagged rows, dirtiest first)."""
    atomic_write_table(_table(frame), paths.scores)
    flagged = frame[frame["flagged"]].sort_values("dirty_score", ascending=False, kind="stable")
    atomic_write_table(_table(flagged), paths.flagged)


def write_truth(truth: pd.DataFrame, paths: RunPaths) -> None:
    atomic_write_table(_table(truth), paths.truth)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("vetset", "numpy", "pandas", "pyarrow", "torch", "prefect"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_manifest(ds: ImageDataset, frame: pd.DataFrame, paths: RunPaths, *, run_id: str, config: dict,
                   timings: dict, detectors: dict) -> dict:
    manifest = {
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "source": ds.stats.source,
            "format": ds.stats.source_format,
            "fingerprint": ds.fingerprint,
            "num_classes": ds.num_classes,
            "class_names": ds.class_names,
            "image_size": list(ds.image_size),
        },
        "rows": {
            "in": len(ds),
            "out": int(len(frame)),
            "flagged": int(frame["flagged"].sum()),
            "unreadable": int(ds.unreadable.sum()),
            "resized": ds.stats.n_resized,
            "converted_to_rgb": ds.stats.n_converted,
            "duplicate_ids_renamed": ds.stats.n_duplicate_ids,
        },
        "detectors": detectors,
        "config": config,
        "timings_seconds": timings,
        "versions": versions(),
        "host": {"platform": platform.platform(), "time": time.time()},
    }
    atomic_write_json(manifest, paths.manifest)
    return manifest
