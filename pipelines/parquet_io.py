"""Reading and writing datasets in the Hugging Face `datasets` Parquet image layout:
`sample_id` (string), `image` (struct{bytes: binary, path: string}), `label` (int64), and the
class names in the schema metadata under b"huggingface"."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
from PIL import Image

from .atomic import atomic_write_table
from .dataset import ImageDataset

HF_METADATA_KEY = b"huggingface"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def hf_features_metadata(class_names: list[str]) -> dict[bytes, bytes]:
    features = {
        "sample_id": {"dtype": "string", "_type": "Value"},
        "image": {"_type": "Image"},
        "label": {"names": list(class_names), "_type": "ClassLabel"},
    }
    return {HF_METADATA_KEY: json.dumps({"info": {"features": features}}).encode()}


def class_names_from_metadata(metadata: dict[bytes, bytes] | None, label_column: str = "label") -> list[str] | None:
    """Class names from the HF schema metadata, or None when absent or unusable."""
    if not metadata or HF_METADATA_KEY not in metadata:
        return None
    try:
        info = json.loads(metadata[HF_METADATA_KEY])
        feature = info.get("info", {}).get("features", {}).get(label_column, {})
        names = feature.get("names")
        return [str(n) for n in names] if names else None
    except (ValueError, AttributeError, TypeError):
        return None


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def dataset_to_table(ds: ImageDataset) -> pa.Table:
    """PNG-encode every image (lossless, so simulated triggers survive the round trip)."""
    images = pa.array(
        [{"bytes": encode_png(img), "path": f"{sid}.png"} for img, sid in zip(ds.images, ds.sample_ids)],
        type=IMAGE_TYPE,
    )
    table = pa.table(
        {
            "sample_id": pa.array(ds.sample_ids.tolist(), type=pa.string()),
            "image": images,
            "label": pa.array(ds.labels, type=pa.int64()),
        }
    )
    return table.replace_schema_metadata(hf_features_metadata(ds.class_names))


def write_dataset_parquet(ds: ImageDataset, path: str | os.PathLike) -> None:
    atomic_write_table(dataset_to_table(ds), path)
