"""Cache keys for scoring. Prefect's default cache policy hashes task inputs, which it cannot
do for an ImageDataset (a large array) or a torch model; vetset keys scores by what decides
them instead:

- a model-based detector (``row_independent = False``): the dataset fingerprint, the
  detector's name, class and config, the audit's seed and expected dirty rate, and the keys of
  the detectors that ran before it in the same audit (a cascade such as VDC reads their
  results). One key for the whole result: a grown dataset is a new key.
- a row-independent detector: per row, ``sample_id`` + a hash of the row's pixels and label,
  under the detector's config key. A grown dataset reuses every row it already scored.

Every detector key also carries the code's identity: vetset's version and a hash of the
source of the detector's module and of the modules every model-based score rests on
(:data:`SHARED_MODULES`), so an upgrade or a local change to a detector never serves the old
algorithm's scores. The default cache lives in the user's cache directory
(``platformdirs.user_cache_dir("vetset")``, or ``$VETSET_CACHE_DIR``), not in whatever folder
the command runs in; ``vetset cache info`` / ``vetset cache clear`` show and empty it.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.dataset import ImageDataset

KEY_VERSION = "2"  # the key's own layout

# what every model-based score depends on besides the detector's own module
SHARED_MODULES = ("cleansers.base", "cleansers.run", "cleansers.detection_model", "cleansers.dynamics",
                  "trainers.loop", "trainers.models", "trainers.augment", "pipelines.dataset")


def vetset_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("vetset")
    except metadata.PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=256)
def _source_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=12).hexdigest()


def module_digest(module_name: str) -> str:
    """A hash of a module's source file (re-read when the file changes)."""
    module = sys.modules.get(module_name)
    if module is None:
        import importlib

        module = importlib.import_module(module_name)
    path = inspect.getsourcefile(module) or getattr(module, "__file__", None)
    if not path or not os.path.exists(path):
        return f"{module_name}:no-source"
    st = os.stat(path)
    return _source_digest(path, st.st_mtime_ns, st.st_size)


def code_identity(cls: type) -> str:
    """vetset's version + the source hashes of ``cls``'s module and :data:`SHARED_MODULES`."""
    modules = [cls.__module__] + [m for m in SHARED_MODULES if m != cls.__module__]
    return _digest(vetset_version(), *(f"{m}={module_digest(m)}" for m in modules))


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
    return f"{name}-{_digest(KEY_VERSION, name, f'{cls.__module__}.{cls.__qualname__}', cfg, code_identity(cls))}"


def whole_key(det_key: str, fingerprint: str, seed: int, expected_dirty_rate: float, upstream: list[str],
              threads: int | None = None) -> str:
    """The key of a model-based detector's whole result on one dataset. ``threads`` (the
    audit's fixed torch thread count, None = torch's own) is part of it: a model trained
    with another thread count is another model (trainers/threads.py)."""
    parts = [fingerprint, str(seed), repr(float(expected_dirty_rate)), *upstream]
    if threads:
        parts.append(f"threads={int(threads)}")
    return f"{det_key}-{_digest(*parts)}"


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


def default_cache_dir(runs_root: str | Path | None = None) -> Path:
    """``$VETSET_CACHE_DIR``, else the user's cache directory for vetset (``runs_root`` is
    not used any more: a cache under the working directory was a different cache in every
    folder the command ran in)."""
    env = os.environ.get("VETSET_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vetset")) / "scores"


def whole_cache_key_fn(context: Any, parameters: dict) -> str:
    """Prefect ``cache_key_fn`` of the whole-detector scoring task: the key is computed by the
    flow (see :func:`whole_key`) and passed in as the ``cache_key`` parameter."""
    return parameters["cache_key"]
