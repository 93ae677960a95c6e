"""Test-only row-independent detectors, imported as a vetset plugin (``--plugin flows_plugin``)
by the flow tests: ``slow_rows`` sleeps ``$VETSET_TEST_DELAY`` seconds per shard and logs the
rows it scored to ``$VETSET_TEST_LOG``; ``flaky_rows`` fails each shard's first attempt;
``broken_rows`` always fails on the shard holding row ``broken``."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np

from cleansers.base import DETECTORS, Detector, DetectorResult


class _RowMean(Detector):
    row_independent = True

    def prepare(self, data, ctx):
        return None

    def score_rows(self, data, rows, ctx, state):
        return data.images.reshape(len(data), -1).mean(axis=1).astype(np.float64)

    def finalize(self, data, scores, ctx, state):
        return DetectorResult(self.name, scores, scores > np.median(scores))

    def score(self, data, ctx):
        return self.finalize(data, self.score_rows(data, np.arange(len(data)), ctx, None), ctx, None)


@DETECTORS.register("slow_rows")
class SlowRows(_RowMean):
    name = "slow_rows"

    def score_rows(self, data, rows, ctx, state):
        scores = super().score_rows(data, rows, ctx, state)
        log = os.environ.get("VETSET_TEST_LOG")
        if log:
            with open(log, "a") as f:
                f.write("".join(f"{s}\n" for s in data.sample_ids))
        time.sleep(float(os.environ.get("VETSET_TEST_DELAY", "0")))
        return scores


ATTEMPTS: dict[str, int] = {}
_LOCK = threading.Lock()


@DETECTORS.register("flaky_rows")
class FlakyRows(_RowMean):
    name = "flaky_rows"

    def score_rows(self, data, rows, ctx, state):
        with _LOCK:
            first = str(data.sample_ids[0])
            ATTEMPTS[first] = ATTEMPTS.get(first, 0) + 1
            if ATTEMPTS[first] == 1:
                raise RuntimeError(f"transient failure on the shard starting at {first}")
        return super().score_rows(data, rows, ctx, state)


@DETECTORS.register("broken_rows")
class BrokenRows(_RowMean):
    name = "broken_rows"

    @dataclass
    class Config:
        broken: int = 0  # position (in the dataset) of the row whose shard always fails

    def score_rows(self, data, rows, ctx, state):
        if self.config.broken in set(np.asarray(rows).tolist()):
            raise RuntimeError("this shard always fails")
        return super().score_rows(data, rows, ctx, state)


@DETECTORS.register("trusted_probe")
class TrustedProbe(Detector):
    """Test-only: scores each row by its distance to the trusted set's mean image, so a test
    can see that ``--trusted`` reached the detectors (and how many rows it had)."""

    name = "trusted_probe"

    def score(self, data, ctx):
        assert ctx.trusted is not None, "no trusted set in the context"
        centre = ctx.trusted.images.reshape(len(ctx.trusted), -1).mean(0)
        dist = np.abs(data.images.reshape(len(data), -1) - centre).mean(1)
        return DetectorResult(self.name, dist, dist > np.quantile(dist, 0.9),
                              info={"n_trusted": len(ctx.trusted), "trusted_classes": ctx.trusted.class_names})
