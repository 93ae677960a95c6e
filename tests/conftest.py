from __future__ import annotations

import functools
import io
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# The suite runs in two pytest-xdist workers on the 2-core CI machine (pyproject's addopts),
# one test file per worker at a time. While both workers train, each waiting torch thread
# would spin on a core the other worker needs; OpenMP's passive wait lets it sleep instead
# (it changes no result, only how idle threads wait). Subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The files by their time, slowest first (two workers, measured on the 2-core CI machine:
# docs/benchmarks.md "The test suite's time"), so that the two workers end together instead
# of one starting a slow file while the other has nothing left. Files not named run last.
SLOW_FILES_FIRST = (
    "test_purify.py", "test_workflow_chain.py", "test_detectors.py", "test_defenses.py", "test_audit_flow.py",
    "test_output_faults.py", "test_accel.py", "test_distributed.py", "test_gpu_suite.py", "test_flows_resume.py",
    "test_vdc.py", "test_clip.py", "test_trainers.py", "test_prefect_modes.py", "test_selection.py",
    "test_checkpoints.py", "test_bench.py", "test_flows_cache.py", "test_flows_serve.py", "test_ingest_fuzz.py",
    "test_flows_dask.py", "test_report_browser.py", "test_threads.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


CIFAR_DIR = next((p for p in (REPO.parent / "shared/data/cifar10", REPO / ".device-data/cifar10") if p.exists()),
                 REPO.parent / "shared/data/cifar10")


def png_bytes(img: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(img)
    if mode:
        im = im.convert(mode)
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    if not (CIFAR_DIR / "train.parquet").exists():
        pytest.fail(f"the shared CIFAR-10 is missing at {CIFAR_DIR}")
    return CIFAR_DIR


@functools.lru_cache(maxsize=2)
def _cifar_table(split: str) -> pa.Table:
    return pq.read_table(CIFAR_DIR / f"{split}.parquet")


def cifar_slice(n: int, split: str = "train", offset: int = 0) -> pa.Table:
    """``n`` rows of the shared CIFAR-10 spread evenly over the file (the files are sorted by
    label, so this is class-balanced); ``offset`` shifts the picks to get a disjoint slice."""
    table = _cifar_table(split)
    step = table.num_rows // n
    idx = np.arange(n) * step + (offset % step)
    return table.take(pa.array(idx))


@pytest.fixture
def cifar_parquet(tmp_path, cifar_dir) -> Path:
    """A 300-row real CIFAR-10 Parquet file in the HF layout."""
    path = tmp_path / "cifar300.parquet"
    pq.write_table(cifar_slice(300), path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _cache_in_a_temporary_folder(tmp_path_factory):
    """The score cache defaults to the user's cache directory; tests never touch it."""
    import os

    os.environ.setdefault("VETSET_CACHE_DIR", str(tmp_path_factory.mktemp("vetset-cache")))
    yield


@pytest.fixture(scope="session", autouse=True)
def _prefect_logging_on_the_session_stream():
    """Prefect sets up its console log handler when first imported, on whatever sys.stderr is
    at that moment. Imported first inside a test that uses capsys, it keeps writing to that
    test's stream after it is closed, and every later flow run in the session fails ("I/O
    operation on closed file"; seen when tests/test_defenses.py ran before the other flow
    tests). So it is set up once, up front."""
    try:
        import prefect.main  # noqa: F401  (``import prefect`` alone is lazy; prefect.main sets logging up)
    except ImportError:  # the GPU machine has no prefect; its tests do not need it
        pass
    yield


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A real, temporary Prefect server (SQLite) for the whole session."""
    import os

    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def poisoned_cifar(tmp_path_factory, cifar_dir) -> dict:
    """600 class-balanced real CIFAR-10 rows, BadNets on 10% to class 0 + 5% symmetric noise,
    written by the simulator (data.parquet, truth.parquet, trigger.json)."""
    from pipelines.loaders import load_dataset
    from pipelines.simulate import SimulationSpec, simulate, write_simulation

    out = tmp_path_factory.mktemp("poisoned")
    pq.write_table(cifar_slice(600), out / "clean.parquet")
    result = simulate(load_dataset(out / "clean.parquet"),
                      SimulationSpec(attack="badnets", poison_rate=0.1, noise="symmetric", noise_rate=0.05, seed=1))
    return {k: str(v) for k, v in write_simulation(result, out / "sim").items()}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout: float) -> None:
    """Ask a child process to stop; kill it if it has not within ``timeout`` seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def start_prefect_server(home: Path):
    """Start `prefect server start` on 127.0.0.1 and a free port with PREFECT_HOME ``home``;
    returns (process, API URL, open log file) once /health answers."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url, log
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on 127.0.0.1 and a free port, with its own PREFECT_HOME.
    Yields the API URL; the server is stopped at the end of the session."""
    proc, url, log = start_prefect_server(tmp_path_factory.mktemp("prefect-server-home"))
    try:
        yield url
    finally:
        stop_process(proc, 20)
        log.close()


@pytest.fixture(scope="session", autouse=True)
def _isolated_cwd(tmp_path_factory):
    """Run every test from a fresh folder, so the default `runs/` (and its score cache) of one
    test session never leaks into another, nor into the checkout."""
    import os

    before = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)


def prefect_api(base_url: str, timeout: float = 30):
    """An httpx client for the Prefect server's REST API that retries 429 / 502 / 503 with a
    growing pause, as Prefect's own client does: the server answers 503 while its SQLite
    database is busy (seen in CI on create_flow_run while a worker and a flow run wrote)."""
    import httpx

    class Retrying(httpx.Client):
        def send(self, request, **kwargs):
            for attempt in range(6):
                response = super().send(request, **kwargs)
                if response.status_code not in (429, 502, 503) or attempt == 5:
                    return response
                response.close()
                time.sleep(min(2.0 * (attempt + 1), 10.0))
            return response

    return Retrying(base_url=base_url, timeout=timeout)
