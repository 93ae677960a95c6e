"""Cascade: send to VDC only the rows an earlier, cheaper detector of the same audit finds
worth it, so that a million-row audit does not cost six million generations.

Criteria (any combination; a row is sent when it meets one of them):
- ``top_k``: the k rows with the highest earlier score;
- ``fraction``: the top fraction of rows by earlier score;
- ``band``: rows whose earlier score lies in [lo, hi] (the uncertain band);
- ``include_flagged``: rows the earlier detector flagged.
Rows not sent get a NaN VDC score and no flag.
"""
from __future__ import annotations

import math

import numpy as np

from pipelines.errors import VetsetError


def _aligned_scores(prior, n: int, name: str, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The earlier detector's scores for the rows VDC was given. Results in the context span
    the whole dataset; ``rows`` (AuditContext.rows) says which of them VDC sees."""
    score, flag = np.asarray(prior.score, dtype=np.float64), np.asarray(prior.flag, dtype=bool)
    if rows is not None and len(rows) == n and len(score) >= n:
        return score[rows], flag[rows]
    if len(score) == n:
        return score, flag
    raise VetsetError(f"vdc cascade_from={name}: its result has {len(score)} rows and VDC got {n}; "
                      f"cannot line them up")


def select_rows(n: int, results: dict, source: str | None, *, top_k: int | None = None,
                fraction: float | None = None, band: tuple[float, float] | list | None = None,
                include_flagged: bool = False, rows: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of the rows to ask VDC about (all rows when ``source`` is None)."""
    if not source:
        return np.ones(n, dtype=bool)
    if source not in results:
        known = ", ".join(results) or "none"
        raise VetsetError(f"vdc cascade_from={source}: that detector has not run before vdc in this audit "
                          f"(ran: {known}); list it earlier in the detectors")
    if top_k is None and fraction is None and band is None and not include_flagged:
        raise VetsetError("vdc cascade_from needs cascade_top_k, cascade_fraction, cascade_band or "
                          "cascade_include_flagged")
    score, flag = _aligned_scores(results[source], n, source, rows)
    valid = ~np.isnan(score)
    order = np.argsort(-np.where(valid, score, -np.inf), kind="stable")
    n_valid = int(valid.sum())
    sel = np.zeros(n, dtype=bool)
    if top_k is not None:
        if int(top_k) < 0:
            raise VetsetError("cascade_top_k must be >= 0")
        sel[order[:min(int(top_k), n_valid)]] = True
    if fraction is not None:
        if not 0 < float(fraction) <= 1:
            raise VetsetError("cascade_fraction must be in (0, 1]")
        sel[order[:min(math.ceil(float(fraction) * n_valid), n_valid)]] = True
    if band is not None:
        try:
            lo, hi = (float(b) for b in band)
        except (TypeError, ValueError):
            raise VetsetError("cascade_band must be two numbers [lo, hi]") from None
        if lo > hi:
            raise VetsetError(f"cascade_band [{lo}, {hi}]: lo is above hi")
        sel |= valid & (score >= lo) & (score <= hi)
    if include_flagged:
        sel |= flag
    return sel
