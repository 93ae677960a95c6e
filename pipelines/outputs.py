"""The files of one audit run (see DESIGN.md, "The data contract"), written as one set.

Each file is written atomically (pipelines/atomic.py), and the set is staged: every file of a
run goes first into a hidden ``.<name>.*.partial`` folder beside the run directory, and only
when all are written are they renamed into place (renames need no space and do not fail
half-way for a full disk). A full disk or an unwritable folder is a one-line
:class:`OutputError`; the run directory keeps what it had. :class:`RunLock` keeps two audits
from writing one directory at once."""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa

from .atomic import atomic_write_json, atomic_write_table
from .dataset import ImageDataset
from .errors import VetsetError

SCORES = "scores.parquet"
FLAGGED = "flagged.parquet"
TRUTH = "truth.parquet"
METRICS = "metrics.json"
MANIFEST = "manifest.json"
# every file an audit run writes; a rerun into the same folder removes those it does not write
# again (a metrics.json of an earlier run with --truth must not sit beside newer scores)
RUN_FILES = (SCORES, FLAGGED, TRUTH, METRICS, MANIFEST, "verdict.json", "report.html", "report.md")


class OutputError(VetsetError):
    """The run's outputs cannot be written (folder not writable, disk full, busy)."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def check_writable(root: str | os.PathLike) -> None:
    """Fail before any work when ``root`` cannot become a run directory: its parent cannot
    be made, is not a folder, or takes no new file."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise OutputError(f"cannot write the run to {root}: it is a file, not a folder")
    ancestor = root.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot write the run to {root}: {ancestor} is a file, not a folder")
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root.parent, prefix=f".{root.name}.probe."):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write the run to {root}: {_reason(exc)}") from None


class RunLock:
    """An exclusive lock on a run directory (``flock`` on ``.<name>.lock`` beside it), held
    while an audit computes and writes it. A second audit of the same directory is refused
    (``wait=False``) or waits; the lock goes with the process, so a killed audit leaves none.
    Where ``fcntl`` is missing (Windows) it locks nothing."""

    def __init__(self, root: str | os.PathLike, *, wait: bool = False):
        self.root = Path(root)
        self.path = self.root.parent / f".{self.root.name}.lock"
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:
            return self
        try:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write the run to {self.root}: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(f"another audit (pid {holder}) is writing {self.root}; wait for it to finish "
                              "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _final_root(root: Path) -> Path:
    """The run directory a staging folder ``.<name>.<random>.partial`` stands for."""
    if root.name.startswith(".") and root.name.endswith(".partial"):
        return root.parent / root.name[1:].rsplit(".", 2)[0]
    return root


@contextmanager
def writing_run(paths: "RunPaths") -> Iterator[None]:
    """Inside a writing step (a Prefect task, whose failures Prefect logs with a traceback):
    an ``OSError`` becomes the one-line :class:`OutputError` that ``staged_run`` would raise."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"could not write the run to {_final_root(paths.root)}: {_reason(exc)}; "
                          "it was left as it was") from None


@contextmanager
def staged_run(paths: "RunPaths", lock: RunLock | None = None) -> Iterator["RunPaths"]:
    """Yield paths in a hidden staging folder beside ``paths.root``; when the block ends
    without error, move every staged file into ``paths.root`` (and remove run files of an
    earlier run that this one did not write). An ``OSError`` while writing (disk full, folder
    not writable) becomes one :class:`OutputError` line and nothing in ``paths.root`` changes.
    ``lock``: the caller's held :class:`RunLock` on ``paths.root``; without one, one is taken
    here (waiting for another writer). Under the lock, staging folders a killed run left
    behind are removed."""
    if lock is None:
        with RunLock(paths.root, wait=True) as held:
            with staged_run(paths, held) as staged:
                yield staged
        return
    final = paths.root
    for stale in final.parent.glob(f".{final.name}.*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    except OSError as exc:
        raise OutputError(f"cannot write the run to {final}: {_reason(exc)}") from None
    try:
        yield RunPaths(stage)
        written = sorted(p.name for p in stage.iterdir())
        final.mkdir(exist_ok=True)
        for name in RUN_FILES:
            if name not in written and (final / name).exists():
                (final / name).unlink()
        for name in written:
            os.replace(stage / name, final / name)
    except OSError as exc:
        raise OutputError(f"could not write the run to {final}: {_reason(exc)}; "
                          "it was left as it was") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


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
