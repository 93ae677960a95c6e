from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
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
