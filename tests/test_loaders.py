"""Loaders: every source format, stable ids, conversions, unreadable rows kept."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import cifar_slice, png_bytes
from pipelines.errors import DataError
from pipelines.loaders import LoadOptions, load_dataset, validate_source
from pipelines.parquet_io import IMAGE_TYPE, write_dataset_parquet

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_parquet_file_in_hf_layout(cifar_parquet):
    ds = load_dataset(cifar_parquet)
    assert len(ds) == 300
    assert ds.images.shape == (300, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.class_names == CIFAR_NAMES
    assert ds.sample_ids[0] == "train/airplane/0000" and len(set(ds.labels)) == 10
    assert not ds.unreadable.any()
    assert ds.stats.source_format == "parquet"
    assert ds.images.std() > 20  # real pixels, not zeros


def test_parquet_folder_concatenates_files(tmp_path, cifar_dir):
    table = cifar_slice(120)
    (tmp_path / "d").mkdir()
    pq.write_table(table.slice(0, 50), tmp_path / "d" / "part-0.parquet")
    pq.write_table(table.slice(50), tmp_path / "d" / "part-1.parquet")
    ds = load_dataset(tmp_path / "d")
    assert len(ds) == 120
    assert list(ds.sample_ids) == table.column("sample_id").to_pylist()


def test_ids_derived_from_content_and_position_are_stable(tmp_path, cifar_dir):
    table = cifar_slice(50).drop(["sample_id"])
    path = tmp_path / "noid.parquet"
    pq.write_table(table, path)
    a, b = load_dataset(path), load_dataset(path)
    assert list(a.sample_ids) == list(b.sample_ids)
    assert len(set(a.sample_ids)) == 50
    assert a.fingerprint == b.fingerprint
    assert a.class_names == CIFAR_NAMES  # metadata kept by pyarrow


def test_no_class_names_falls_back_to_numbers(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    table = pa.table({"image": pa.array([{"bytes": png_bytes(i), "path": None} for i in imgs], IMAGE_TYPE),
                      "label": pa.array([0, 1, 2, 0, 1, 2], pa.int64())})
    pq.write_table(table, tmp_path / "x.parquet")
    ds = load_dataset(tmp_path / "x.parquet")
    assert ds.class_names == ["0", "1", "2"]
    np.testing.assert_array_equal(ds.images, imgs)  # PNG is lossless


def test_unreadable_rows_are_kept_and_marked(tmp_path):
    rng = np.random.default_rng(1)
    good = [png_bytes(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]
    blobs = [good[0], good[1][: len(good[1]) // 2], b"garbage, not an image", b"", None, good[2], good[3]]
    table = pa.table({"sample_id": [f"r{i}" for i in range(7)],
                      "image": pa.array([{"bytes": b, "path": None} for b in blobs], IMAGE_TYPE),
                      "label": pa.array([0, 1, 0, 1, 0, 1, 0], pa.int64())})
    pq.write_table(table, tmp_path / "bad.parquet")
    ds = load_dataset(tmp_path / "bad.parquet")
    assert len(ds) == 7
    assert ds.unreadable.tolist() == [False, True, True, True, True, False, False]
    assert ds.stats.n_unreadable == 4
    assert (ds.images[ds.unreadable] == 0).all()


def test_grayscale_rgba_and_odd_sizes_are_converted(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
    base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    (root / "cat" / "rgb.png").write_bytes(png_bytes(base))
    (root / "cat" / "gray.png").write_bytes(png_bytes(base, "L"))
    (root / "dog" / "rgba.png").write_bytes(png_bytes(base, "RGBA"))
    (root / "dog" / "big.png").write_bytes(png_bytes(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)))
    (root / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(root)
    assert ds.stats.source_format == "image_folder"
    assert ds.class_names == ["cat", "dog"]
    assert sorted(ds.sample_ids) == ["cat/gray.png", "cat/rgb.png", "dog/big.png", "dog/rgba.png"]
    assert ds.images.shape == (4, 32, 32, 3)
    assert ds.stats.n_converted == 2 and ds.stats.n_resized == 1
    gray = ds.images[list(ds.sample_ids).index("cat/gray.png")]
    assert (gray[..., 0] == gray[..., 1]).all()
    labels = dict(zip(ds.sample_ids, ds.labels))
    assert labels["cat/rgb.png"] == 0 and labels["dog/big.png"] == 1


def test_saved_hf_dataset(tmp_path, cifar_dir):
    datasets = pytest.importorskip("datasets")
    table = cifar_slice(40)
    features = datasets.Features({"sample_id": datasets.Value("string"), "image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=CIFAR_NAMES)})
    hf = datasets.Dataset.from_dict(table.to_pydict(), features=features)
    hf.save_to_disk(str(tmp_path / "saved"))
    ds = load_dataset(tmp_path / "saved")
    assert ds.stats.source_format == "hf_saved"
    assert len(ds) == 40 and ds.class_names == CIFAR_NAMES
    assert list(ds.labels) == table.column("label").to_pylist()
    # a DatasetDict picks the split
    datasets.DatasetDict({"train": hf, "test": hf.select(range(5))}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_dataset(tmp_path / "dd", LoadOptions(split="test"))) == 5
    with pytest.raises(DataError, match="no split 'val'"):
        load_dataset(tmp_path / "dd", LoadOptions(split="val"))


def test_embedded_digits():
    ds = load_dataset("embedded:digits")
    assert len(ds) == 1797 and ds.images.shape[1:] == (32, 32, 3)
    assert ds.class_names == [str(i) for i in range(10)]
    assert np.bincount(ds.labels).min() > 150


def test_write_then_read_round_trip(tmp_path, cifar_parquet):
    ds = load_dataset(cifar_parquet)
    write_dataset_parquet(ds, tmp_path / "rt.parquet")
    back = load_dataset(tmp_path / "rt.parquet")
    np.testing.assert_array_equal(back.images, ds.images)
    assert list(back.sample_ids) == list(ds.sample_ids) and back.class_names == ds.class_names
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or directory"),
    ("not_parquet", "not a readable Parquet file"),
    ("no_image", "no image column"),
    ("no_label", "no label column 'label'"),
    ("empty", "empty"),
    ("out_of_range", "outside the class range 0..9"),
    ("null_label", "have no label"),
])
def test_bad_sources_raise_one_line_errors(tmp_path, cifar_dir, case, message):
    table = cifar_slice(20)
    path = tmp_path / "bad.parquet"
    if case == "missing":
        path = tmp_path / "nothing-here.parquet"
    elif case == "not_parquet":
        path.write_bytes(b"this is not parquet at all")
    elif case == "no_image":
        pq.write_table(table.drop(["image"]), path)
    elif case == "no_label":
        pq.write_table(table.drop(["label"]), path)
    elif case == "empty":
        pq.write_table(table.slice(0, 0), path)
    elif case == "out_of_range":
        labels = table.column("label").to_pylist()
        labels[7] = 12
        pq.write_table(table.set_column(2, "label", pa.array(labels, pa.int64())), path)
    elif case == "null_label":
        labels = table.column("label").to_pylist()
        labels[3] = None
        pq.write_table(table.set_column(2, "label", pa.array(labels, pa.int64())), path)
    for fn in (validate_source, load_dataset):
        with pytest.raises(DataError, match=message) as info:
            fn(path)
        assert "\n" not in str(info.value)
