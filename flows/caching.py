"""Cache keys for scoring. Prefect's default cache policy hashes task inputs, which it cannot
do for an ImageDataset (a large array) or a torch model; vetset keys scores by what decides
them instead:

- a model-based detector (``row_independent = False``): the dataset fingerprint, the
  detector's name, class and config, the audit's seed and expected dirty rate, and the keys of
  the detectors that ran before it in the same audit (a cascade such as VDC reads their
  results). One key for the whole result: a grown dataset is a new key.
- a row-independent detector: per row, ``sample_id`` + a hash of the row's pixels and label,
  under the detector's config key. A grown dataset reuses every row it already scored.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.dataset import ImageDataset

KEY_VERSION = "1"  # bump when a score's meaning changes, to orphan old caches


def _digest(*parts: str, size: int = 16) -> str:
    h = hashlib.blake2b(digest_size=size)
    for part in parts:
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()


def config_dict(config: Any) -> dict:
    return asdict(config) if is_dataclass(config) else dict(getattr(config, "__dict__", {}))


def detector_key(name: str, detector: Any) -> str:
    """Name + class + config of a built detector."""
    cls = type(detector)
    cfg = json.dumps(config_dict(detector.config), sort_keys=True, default=str)
    return f"{name}-{_digest(KEY_VERSION, name, f'{cls.__module__}.{cls.__qualname__}', cfg)}"


def whole_key(det_key: str, fingerprint: str, seed: int, expected_dirty_rate: float, upstream: list[str]) -> str:
    """The key of a model-based detector's whole result on one dataset."""
    return f"{det_key}-{_digest(fingerprint, str(seed), repr(float(expected_dirty_rate)), *upstream)}"


def row_keys(ds: ImageDataset) -> np.ndarray:
    """One key per row: sample_id + blake2b(pixels, shape, label)."""
    out = np.empty(len(ds), dtype=object)
    shape = str(ds.images.shape[1:]).encode()
    for i in range(len(ds)):
        h = hashlib.blake2b(digest_size=12)
        h.update(shape)
        h.update(ds.images[i].tobytes())
        h.update(int(ds.labels[i]).to_bytes(8, "little", signed=True))
        out[i] = f"{ds.sample_ids[i]}\x1f{h.hexdigest()}"
    return out


def default_cache_dir(runs_root: str | Path) -> Path:
    return Path(runs_root) / ".cache"


def whole_cache_key_fn(context: Any, parameters: dict) -> str:
    """Prefect ``cache_key_fn`` of the whole-detector scoring task: the key is computed by the
    flow (see :func:`whole_key`) and passed in as the ``cache_key`` parameter."""
    return parameters["cache_key"]
