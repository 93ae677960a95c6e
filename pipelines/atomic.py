"""Atomic writes: everything goes to a temporary name in the target folder, then is renamed,
so a crash never leaves a half-written table or report behind."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(text.encode("utf-8"), path)


def _json_default(obj: Any) -> Any:
    """numpy / torch scalars and arrays, and paths."""
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=True)
    return atomic_write_text(text + "\n", path)


def atomic_write_table(table: pa.Table, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_json(path: str | os.PathLike, missing: str) -> Any:
    """Read a JSON file; a missing file raises VetsetError(``missing``), a malformed one a
    one-line VetsetError naming the file."""
    from .errors import VetsetError

    path = Path(path)
    if not path.is_file():
        raise VetsetError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VetsetError(f"{path} is not valid JSON: {exc}") from None
