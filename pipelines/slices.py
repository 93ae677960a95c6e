"""Evenly spread row slices of a file, for tests and benchmarks.

The shared CIFAR-10 files are sorted by label, so a slice must be spread over the whole
file. ``spread_indices(50000, 6000)`` takes rows ``floor(i * 50000 / 6000)``: exactly 600
per class. (Stepping by ``50000 // 6000 = 8`` instead, as the benchmarks once did, stops at
row 47,992 and gives the last class 375 rows against 625 for the others.)
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


def spread_indices(num_rows: int, n: int, offset: int = 0) -> np.ndarray:
    """``n`` row positions spread evenly over ``num_rows`` (all rows when ``n`` is 0 or
    covers the file); ``offset`` shifts them within their gap to pick a disjoint slice."""
    if n <= 0 or n >= num_rows:
        return np.arange(num_rows)
    gap = max(1, num_rows // n)
    return (np.arange(n, dtype=np.int64) * num_rows) // n + (offset % gap)


def spread_slice(table: pa.Table, n: int, offset: int = 0) -> pa.Table:
    """The rows :func:`spread_indices` picks, as a table."""
    if n <= 0 or n >= table.num_rows:
        return table
    return table.take(pa.array(spread_indices(table.num_rows, n, offset)))
