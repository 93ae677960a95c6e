"""Progress of long stages, shown twice: a rich progress bar on the terminal (stderr) and a
Prefect progress artifact (``vetset-audit-progress``) that the UI and API show while the run
goes on. Artifact updates are throttled (an API call each)."""
from __future__ import annotations

import sys
import time

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StageProgress:
    """Units of work (shards, whole detectors) over the audit's scoring stage."""

    def __init__(self, total: int, key: str = "vetset-audit-progress", description: str = "scoring",
                 min_interval: float = 0.5, console: bool | None = None):
        self.total = max(int(total), 1)
        self.done = 0
        self.min_interval = min_interval
        self._last = 0.0
        self._artifact = create_progress_artifact(0.0, key=key, description=f"vetset audit: {description}")
        show = sys.stderr.isatty() if console is None else console
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(stderr=True), disable=not show, transient=False)
        self._task = self._bar.add_task(description, total=self.total)
        self._bar.start()

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0)

    def advance(self, n: int = 1, description: str | None = None) -> None:
        self.done += n
        self._bar.update(self._task, advance=n, **({"description": description} if description else {}))
        now = time.monotonic()
        if now - self._last >= self.min_interval or self.done >= self.total:
            self._last = now
            update_progress_artifact(self._artifact, 100.0 * self.fraction)

    def close(self) -> None:
        self.done = self.total
        update_progress_artifact(self._artifact, 100.0)
        self._bar.stop()

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._bar.stop()
