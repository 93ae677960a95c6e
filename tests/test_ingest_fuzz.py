"""Hypothesis-fuzzed ingest: any bytes, image modes, formats, sizes and labels in the image and
label columns either load (then the audit keeps every row: rows in == rows out, undecodable
rows kept and flagged) or are refused with one DataError line (a missing, negative or
out-of-range label is a file-level error by the data contract); nothing else is raised."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipelines.errors import VetsetError
from pipelines.parquet_io import IMAGE_TYPE, hf_features_metadata

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"]
FORMATS = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"]


@st.composite
def image_cell(draw) -> bytes | None:
    kind = draw(st.sampled_from(["image", "image", "image", "truncated", "bytes", "empty", "none"]))
    if kind == "none":
        return None
    if kind == "empty":
        return b""
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=300))
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode: PNG of the RGB image
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
    blob = buf.getvalue()
    if kind == "truncated":
        blob = blob[: draw(st.integers(0, max(0, len(blob) - 1)))]
    return blob


labels = st.one_of(st.integers(0, 9), st.integers(0, 9), st.integers(0, 9), st.integers(0, 9), st.integers(-3, 40),
                   st.none())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=st.lists(st.tuples(image_cell(), labels), min_size=1, max_size=14),
       named=st.booleans())
def test_any_image_and_label_cells_load_and_audit_with_every_row_or_fail_in_one_line(rows, named, tmp_path_factory):
    from cleansers.audit import run_audit
    from pipelines.loaders import load_dataset
    from pipelines.outputs import RunPaths

    folder = tmp_path_factory.mktemp("fuzz")
    table = pa.table({
        "sample_id": pa.array([f"r{i}" for i in range(len(rows))], pa.string()),
        "image": pa.array([{"bytes": b, "path": f"r{i}.img"} for i, (b, _) in enumerate(rows)], IMAGE_TYPE),
        "label": pa.array([lab for _, lab in rows], pa.int64()),
    })
    if named:
        table = table.replace_schema_metadata(hf_features_metadata([f"c{k}" for k in range(10)]))
    pq.write_table(table, folder / "d.parquet")
    try:
        ds = load_dataset(folder / "d.parquet")
    except VetsetError as exc:
        assert "\n" not in str(exc)
        bad = [lab for _, lab in rows if lab is None or lab < 0 or (named and lab > 9)]
        assert bad or not named, f"refused a table whose labels are all valid: {exc}"
        event("refused at load")
        return
    assert len(ds) == len(rows)
    readable = [b for b, _ in rows if b]
    assert ds.unreadable.sum() >= len(rows) - len(readable)  # empty / missing cells are unreadable rows
    try:
        result = run_audit(ds, ["outlier"], RunPaths(folder / "run"), run_id="fuzz")
    except VetsetError as exc:  # e.g. images smaller than the detector's window: refused, in one line
        assert "\n" not in str(exc) and min(ds.image_size) < 3, exc
        event("refused by the detector")
        return
    event(f"audited ({'with' if ds.unreadable.any() else 'no'} unreadable rows)")
    frame = result.frame
    assert len(frame) == len(rows) and list(frame["sample_id"]) == [f"r{i}" for i in range(len(rows))]
    assert frame.loc[ds.unreadable, "flagged"].all()  # an unreadable row is kept and flagged
    assert len(pq.read_table(folder / "run" / "scores.parquet")) == len(rows)
