"""A fixed torch thread count while a computation runs, so that its result does not depend
on the machine's core count.

torch's CPU kernels split their reductions (a convolution's weight gradient over the batch,
a loss's sum) by the intra-op thread count, so the float sums differ in their last bits
from one thread count to another, and training amplifies them: a small CNN trained on the
same 1,200 digits with the same seed ended with different weights at 1, 2 and 4 threads,
and on a 6,000-row CIFAR-10 audit a 1- and a 2-thread run's logits differed by up to 1.55
(41 of 6,000 rows' flags differed; docs/benchmarks.md). The thread count, not the cores:
2 threads pinned to one core (``taskset -c 0``) or started under ``OMP_NUM_THREADS=1``
gave the same weights, bit for bit, as 2 threads on 2 cores. Inference (a forward pass)
gave the same features and logits at 1 and 2 threads.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def fixed_threads(n: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(n)`` and restore the earlier count after;
    ``None`` or 0 leaves torch's setting alone."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
