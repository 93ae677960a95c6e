"""Task runners for the shard tasks, chosen per flow run (a parameter, so a deployment can pick
one): Prefect's thread runner (default) or Dask through prefect-dask, on an existing cluster
(``dask_address``) or a LocalCluster started for the run."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from prefect.task_runners import ThreadPoolTaskRunner


def make_task_runner(kind: str, *, workers: int | None = None, dask_address: str | None = None,
                     gpu: bool = False) -> Any:
    if kind == "thread":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # an optional dependency
            raise RuntimeError("--task-runner dask needs prefect-dask: pip install 'prefect-dask>=0.3.7,<0.4'") from exc
        if dask_address:
            return DaskTaskRunner(address=dask_address)
        kwargs: dict[str, Any] = {"n_workers": workers or 2, "threads_per_worker": 1, "processes": True,
                                  "dashboard_address": ":0"}
        if gpu:
            kwargs["resources"] = {"GPU": 1}
        return DaskTaskRunner(cluster_kwargs=kwargs)
    raise ValueError(f"unknown task runner {kind!r}; use thread or dask")


@contextlib.contextmanager
def resources(kind: str, gpu: bool) -> Iterator[None]:
    """Annotate Dask tasks submitted inside with a GPU resource (a worker with ``GPU: 1``
    takes one at a time); a no-op for threads or CPU work."""
    if kind == "dask" and gpu:
        import dask

        with dask.annotate(resources={"GPU": 1}):
            yield
    else:
        yield


@contextlib.contextmanager
def _api_url_for_local_workers(local: bool) -> Iterator[None]:
    """In Prefect's ephemeral mode (no PREFECT_API_URL), LocalCluster workers would each start
    their own temporary server; point them, through the environment they inherit, at the one
    this flow run uses."""
    import os

    if not local or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        url = str(client.api_url).rstrip("/")
    os.environ["PREFECT_API_URL"] = url
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def wants_gpu(device: str) -> bool:
    from trainers.accel import cuda_available, is_cuda

    return cuda_available() if device == "auto" else is_cuda(device)


class LazyRunner:
    """Starts the task runner (a LocalCluster can take seconds) only when a shard is to run."""

    def __init__(self, kind: str, *, workers: int | None = None, dask_address: str | None = None, gpu: bool = False):
        self.kind, self.workers, self.dask_address, self.gpu = kind, workers, dask_address, gpu
        self._runner: Any = None

    @property
    def started(self) -> bool:
        return self._runner is not None

    def get(self) -> Any:
        if self._runner is None:
            runner = make_task_runner(self.kind, workers=self.workers, dask_address=self.dask_address, gpu=self.gpu)
            with _api_url_for_local_workers(self.kind == "dask" and not self.dask_address):
                self._runner = runner.__enter__()
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            runner.__exit__(None, None, None)

    def __enter__(self) -> "LazyRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
