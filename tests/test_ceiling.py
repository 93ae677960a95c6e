"""benchmarks/ceiling.py: the truth-chosen ceilings that say whether a missed audit target is the
verdict's or the detection model's (docs/benchmarks.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ceiling  # noqa: E402


def _class(shift: float, seed: int = 0, rows: int = 400, injected: int = 100, dims: int = 10):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dims))
    y = np.zeros(rows, dtype=bool)
    y[rng.choice(rows, injected, replace=False)] = True
    x[y, 0] += shift
    return x, y


def test_split_ceiling_reads_a_separable_class_high_and_a_one_population_class_at_chance():
    for seed in (0, 1, 2):
        x, y = _class(shift=4.0, seed=seed)
        high = ceiling.split_ceiling(x, y)
        assert high["injected"] == 100 and high["rows"] == 400
        assert high["precision_at_k"] >= 0.85 and high["auroc"] >= 0.95, high
        x, y = _class(shift=0.0, seed=seed)
        low = ceiling.split_ceiling(x, y)
        # out of fold: a fit that saw the truth cannot carry it to rows it did not see
        assert low["precision_at_k"] <= 0.45 and low["auroc"] <= 0.65, low


def test_split_ceiling_is_nan_when_a_part_is_too_small_to_fold():
    x, y = _class(shift=4.0, injected=3)
    out = ceiling.split_ceiling(x, y)
    assert np.isnan(out["precision_at_k"]) and np.isnan(out["auroc"])


def test_threshold_ceiling_keeps_the_clean_rows_flagged_within_the_bar():
    negative_scores = np.arange(100, dtype=float)
    positive_scores = np.array([50.5, 98.5, 99.5, 200.0, np.nan])
    score = np.concatenate([negative_scores, positive_scores])
    positive = np.r_[np.zeros(100, bool), np.ones(5, bool)]
    # 2% of 100 clean rows: the cut flags 98 and 99 and no lower clean row; 3 of 5 positives
    # pass it (a NaN score is never flagged)
    assert ceiling.threshold_ceiling(score, positive, ~positive, 0.02) == 3 / 5
    assert ceiling.threshold_ceiling(score, positive, ~positive, 0.0) == 2 / 5
    assert ceiling.threshold_ceiling(score, positive, ~positive, 1.0) == 4 / 5


def test_no_saved_cells_is_one_line_and_a_nonzero_exit(tmp_path, capsys):
    assert ceiling.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no saved cells" in err[0]
