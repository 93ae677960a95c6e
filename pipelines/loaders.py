"""Load a dataset from any supported source into an ImageDataset.

Sources (tried in this order, first match wins):
- ``embedded:digits`` (or ``digits``): the default that ships with scikit-learn;
- a Parquet file, or a folder of Parquet files, in the Hugging Face image layout;
- a folder written by ``datasets.Dataset.save_to_disk``;
- an image folder with one sub-folder per class;
- a Hugging Face hub name already in the local cache (never downloaded).

Every problem with the input raises DataError with a one-line message.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .dataset import ImageDataset, LoadStats
from .decode import decode_images
from .errors import DataError
from .parquet_io import class_names_from_metadata
from .registry import Registry

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


@dataclass
class LoadOptions:
    image_column: str | None = None  # None: "image", "img", or the only image-struct column
    label_column: str = "label"
    id_column: str = "sample_id"
    split: str = "train"  # for DatasetDicts and hub names
    image_size: tuple[int, int] | None = None  # None: the most common size in the data
    class_names: list[str] | None = None  # overrides what the source says


@dataclass
class Loader:
    name: str
    matches: Callable[[str], bool]
    load: Callable[[str, LoadOptions], ImageDataset]


LOADERS: Registry[Loader] = Registry("dataset format")


def load_dataset(source: str | os.PathLike, options: LoadOptions | None = None) -> ImageDataset:
    """Load ``source`` (path, ``embedded:NAME``, or cached hub name) as an ImageDataset."""
    options = options or LoadOptions()
    source = str(source)
    for name in LOADERS.names_in_order():
        loader = LOADERS.get(name)
        if loader.matches(source):
            ds = loader.load(source, options)
            ds.stats.source = source
            ds.stats.source_format = loader.name
            return ds
    if not Path(source).exists():
        raise DataError(f"{source}: no such file or directory (and not a cached Hugging Face dataset)")
    raise DataError(
        f"{source}: not a Parquet file, a saved Hugging Face dataset, or an image folder with one sub-folder per class"
    )


# ---------------------------------------------------------------- assembling rows


def derive_sample_ids(blobs: list[bytes | None]) -> list[str]:
    """Stable ids from content and position: ``<position>-<hash of the bytes>``."""
    ids = []
    for i, blob in enumerate(blobs):
        digest = hashlib.blake2b(blob or b"", digest_size=6).hexdigest()
        ids.append(f"{i:07d}-{digest}")
    return ids


def _unique_ids(ids: list[str]) -> tuple[list[str], int]:
    seen: dict[str, int] = {}
    out, n_dup = [], 0
    for sid in ids:
        if sid in seen:
            seen[sid] += 1
            n_dup += 1
            out.append(f"{sid}#{seen[sid]}")
        else:
            seen[sid] = 0
            out.append(sid)
    return out, n_dup


def _check_labels(labels: list, class_names: list[str] | None, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    missing = [i for i, v in enumerate(labels) if v is None]
    if missing:
        i = missing[0]
        raise DataError(f"{len(missing)} row(s) have no label (first: row {i}, sample_id {ids[i]!r})")
    arr = np.asarray(labels, dtype=np.int64)
    if class_names is None:
        if (arr < 0).any():
            i = int(np.argmax(arr < 0))
            raise DataError(f"label {arr[i]} at row {i} (sample_id {ids[i]!r}) is negative")
        class_names = [str(c) for c in range(int(arr.max()) + 1)]
    bad = (arr < 0) | (arr >= len(class_names))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"label {arr[i]} at row {i} (sample_id {ids[i]!r}) is outside the class range 0..{len(class_names) - 1}"
            f" ({int(bad.sum())} such rows)"
        )
    return arr, class_names


def assemble(
    blobs: list[bytes | None],
    labels: list,
    class_names: list[str] | None,
    ids: list[str] | None,
    options: LoadOptions,
) -> ImageDataset:
    if len(blobs) == 0:
        raise DataError("the dataset is empty (0 rows)")
    if ids is None or any(i is None or i == "" for i in ids):
        given = ids
        ids = derive_sample_ids(blobs)
        if given is not None:  # keep the source's ids where present
            ids = [g if g not in (None, "") else d for g, d in zip(given, ids)]
    ids, n_dup = _unique_ids([str(i) for i in ids])
    if options.class_names:
        class_names = list(options.class_names)
    label_arr, class_names = _check_labels(labels, class_names, ids)
    decoded = decode_images(blobs, options.image_size)
    stats = LoadStats(
        n_rows=len(blobs),
        n_unreadable=int(decoded.unreadable.sum()),
        n_resized=decoded.n_resized,
        n_converted=decoded.n_converted,
        n_duplicate_ids=n_dup,
    )
    return ImageDataset(decoded.images, label_arr, class_names, np.asarray(ids, dtype=object), decoded.unreadable, stats)


# ---------------------------------------------------------------- Parquet


def _is_image_struct(field: pa.Field) -> bool:
    return pa.types.is_struct(field.type) and field.type.get_field_index("bytes") >= 0


def _image_column(schema: pa.Schema, options: LoadOptions, where: str) -> str:
    if options.image_column:
        if options.image_column not in schema.names:
            raise DataError(f"{where}: no image column {options.image_column!r} (columns: {', '.join(schema.names)})")
        return options.image_column
    for name in ("image", "img"):
        if name in schema.names:
            return name
    structs = [f.name for f in schema if _is_image_struct(f)]
    if len(structs) == 1:
        return structs[0]
    raise DataError(
        f"{where}: wrong schema, no image column (expected 'image' as struct{{bytes, path}}; columns: {', '.join(schema.names)})"
    )


def _blobs_from_column(column: pa.ChunkedArray | pa.Array, where: str) -> list[bytes | None]:
    t = column.type
    if pa.types.is_struct(t):
        if t.get_field_index("bytes") < 0:
            raise DataError(f"{where}: wrong schema, the image column is a struct without a 'bytes' field")
        column = pa.chunked_array([c.field("bytes") for c in column.chunks]) if isinstance(column, pa.ChunkedArray) else column.field("bytes")
        return column.to_pylist()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return column.to_pylist()
    raise DataError(f"{where}: wrong schema, the image column has type {t} (expected struct{{bytes, path}} or binary)")


def table_to_dataset(table: pa.Table, options: LoadOptions, where: str, class_names: list[str] | None = None) -> ImageDataset:
    image_col = _image_column(table.schema, options, where)
    if options.label_column not in table.schema.names:
        raise DataError(f"{where}: no label column {options.label_column!r} (columns: {', '.join(table.schema.names)})")
    label_type = table.schema.field(options.label_column).type
    if not (pa.types.is_integer(label_type) or pa.types.is_dictionary(label_type)):
        raise DataError(f"{where}: label column {options.label_column!r} has type {label_type}, expected integers")
    if class_names is None:
        class_names = class_names_from_metadata(table.schema.metadata, options.label_column)
    ids = table.column(options.id_column).to_pylist() if options.id_column in table.schema.names else None
    blobs = _blobs_from_column(table.column(image_col), where)
    return assemble(blobs, table.column(options.label_column).to_pylist(), class_names, ids, options)


def _parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if p.is_file())


def _matches_parquet(source: str) -> bool:
    p = Path(source)
    if p.is_file():
        return p.suffix == ".parquet" or _has_parquet_magic(p)
    return p.is_dir() and not _is_hf_saved(p) and any(True for _ in p.rglob("*.parquet"))


def _has_parquet_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def load_parquet(source: str, options: LoadOptions) -> ImageDataset:
    files = _parquet_files(Path(source))
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    try:
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as exc:
        raise DataError(f"{source}: the Parquet files have different schemas ({str(exc).splitlines()[0]})") from None
    return table_to_dataset(table, options, source)


# ---------------------------------------------------------------- Hugging Face datasets


def _is_hf_saved(p: str | Path) -> bool:
    p = Path(p)
    return p.is_dir() and any((p / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))


def _hf_to_dataset(hf, options: LoadOptions, where: str) -> ImageDataset:
    """Read an HF Dataset's Arrow table directly (no per-row PIL round trip)."""
    try:
        from datasets import DatasetDict
    except ImportError:  # pragma: no cover - only without the [hf] extra
        raise DataError("reading Hugging Face datasets needs the 'datasets' package: pip install 'vetset[hf]'") from None
    if isinstance(hf, DatasetDict):
        if options.split not in hf:
            raise DataError(f"{where}: no split {options.split!r} (splits: {', '.join(hf)})")
        hf = hf[options.split]
    class_names = None
    feature = hf.features.get(options.label_column)
    if feature is not None and getattr(feature, "names", None):
        class_names = list(feature.names)
    table = hf.data.table if hasattr(hf.data, "table") else hf.data
    if hf._indices is not None:  # a filtered/shuffled view: materialise the selected rows
        table = hf.flatten_indices().data.table
    return table_to_dataset(table, options, where, class_names)


def load_hf_saved(source: str, options: LoadOptions) -> ImageDataset:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise DataError("reading Hugging Face datasets needs the 'datasets' package: pip install 'vetset[hf]'") from None
    try:
        hf = datasets.load_from_disk(source)
    except Exception as exc:  # datasets raises many types for a broken folder
        raise DataError(f"{source}: not a readable saved Hugging Face dataset ({str(exc).splitlines()[0]})") from None
    return _hf_to_dataset(hf, options, source)


def _looks_like_hub_name(source: str) -> bool:
    if Path(source).exists() or source.startswith(("/", ".", "embedded:")):
        return False
    parts = source.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not Path(source).suffix


def load_hf_hub_cached(source: str, options: LoadOptions) -> ImageDataset:
    """A hub dataset name, read only from the local cache: nothing is downloaded."""
    try:
        import datasets
    except ImportError:
        raise DataError(f"{source}: no such path; to read it as a Hugging Face dataset install 'vetset[hf]'") from None
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        hf = datasets.load_dataset(source, split=options.split)
    except Exception:
        raise DataError(
            f"{source}: no such path, and not a Hugging Face dataset in the local cache "
            "(vetset never downloads; run `datasets.load_dataset(...)` once where there is network, or pass a local path)"
        ) from None
    return _hf_to_dataset(hf, options, source)


# ---------------------------------------------------------------- image folder


def _class_dirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def _matches_image_folder(source: str) -> bool:
    p = Path(source)
    if not p.is_dir() or _is_hf_saved(p):
        return False
    return any(f.suffix.lower() in IMAGE_SUFFIXES for d in _class_dirs(p) for f in d.rglob("*") if f.is_file())


def load_image_folder(source: str, options: LoadOptions) -> ImageDataset:
    root = Path(source)
    class_dirs = _class_dirs(root)
    blobs, labels, ids = [], [], []
    for k, d in enumerate(class_dirs):
        for f in sorted(x for x in d.rglob("*") if x.is_file() and x.suffix.lower() in IMAGE_SUFFIXES):
            try:
                blobs.append(f.read_bytes())
            except OSError:
                blobs.append(None)
            labels.append(k)
            ids.append(f.relative_to(root).as_posix())
    return assemble(blobs, labels, [d.name for d in class_dirs], ids, options)


# ---------------------------------------------------------------- the embedded default


def _matches_embedded(source: str) -> bool:
    return source.startswith("embedded:") or (source == "digits" and not Path(source).exists())


def load_embedded(source: str, options: LoadOptions) -> ImageDataset:
    from .embedded import load_embedded_clean

    return load_embedded_clean(source.removeprefix("embedded:"))


LOADERS.register("embedded")(Loader("embedded", _matches_embedded, load_embedded))
LOADERS.register("parquet")(Loader("parquet", _matches_parquet, load_parquet))
LOADERS.register("hf_saved")(Loader("hf_saved", _is_hf_saved, load_hf_saved))
LOADERS.register("image_folder")(Loader("image_folder", _matches_image_folder, load_image_folder))
LOADERS.register("hf_hub_cache")(Loader("hf_hub_cache", _looks_like_hub_name, load_hf_hub_cached))


# ---------------------------------------------------------------- cheap checks before a run


def validate_source(source: str | os.PathLike, options: LoadOptions | None = None) -> None:
    """Catch the usual input mistakes without decoding any image: a missing path, a file that
    is not Parquet, a wrong schema, an empty table, missing or out-of-range labels. Raises
    DataError; returns None when the source looks usable (the full load may still find
    unreadable rows, which are kept and flagged)."""
    options = options or LoadOptions()
    source = str(source)
    matched = next((LOADERS.get(n) for n in LOADERS.names_in_order() if LOADERS.get(n).matches(source)), None)
    if matched is None:
        load_dataset(source, options)  # raises the right one-line error
        return
    if matched.name != "parquet":
        return
    for f in _parquet_files(Path(source)):
        try:
            pf = pq.ParquetFile(f)
            schema = pf.schema_arrow
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{f}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
        _image_column(schema, options, str(f))
        if options.label_column not in schema.names:
            raise DataError(f"{f}: no label column {options.label_column!r} (columns: {', '.join(schema.names)})")
    tables = [pq.read_table(f, columns=[c for c in (options.label_column, options.id_column) if c in pq.read_schema(f).names])
              for f in _parquet_files(Path(source))]
    table = pa.concat_tables(tables, promote_options="default")
    if table.num_rows == 0:
        raise DataError(f"{source}: the dataset is empty (0 rows)")
    class_names = options.class_names or class_names_from_metadata(pq.read_schema(_parquet_files(Path(source))[0]).metadata,
                                                                 options.label_column)
    ids = table.column(options.id_column).to_pylist() if options.id_column in table.schema.names else list(map(str, range(table.num_rows)))
    _check_labels(table.column(options.label_column).to_pylist(), class_names, [str(i) for i in ids])


def peek_class_names(source: str | os.PathLike, options: LoadOptions | None = None) -> list[str] | None:
    """The class names of ``source`` when they can be read without decoding images (Parquet
    schema metadata, or the sub-folders of an image folder); None otherwise."""
    options = options or LoadOptions()
    if options.class_names:
        return list(options.class_names)
    source = str(source)
    if _matches_parquet(source):
        files = _parquet_files(Path(source))
        return class_names_from_metadata(pq.read_schema(files[0]).metadata, options.label_column) if files else None
    if _matches_image_folder(source):
        return [d.name for d in _class_dirs(Path(source))]
    if _matches_embedded(source):
        return [str(i) for i in range(10)]
    return None
