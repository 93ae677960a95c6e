"""Detection metrics against a truth table. Positive = dirty (poisoned or wrong label)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN scores are
    left out; NaN when only one class is present."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    keep = ~np.isnan(score)
    positive, score = positive[keep], score[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def detection_metrics(positive: np.ndarray, flag: np.ndarray, score: np.ndarray | None = None) -> dict:
    positive = np.asarray(positive, dtype=bool)
    flag = np.asarray(flag, dtype=bool)
    tp = int((positive & flag).sum())
    fp = int((~positive & flag).sum())
    fn = int((positive & ~flag).sum())
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    tpr = tp / n_pos if n_pos else float("nan")
    fpr = fp / n_neg if n_neg else float("nan")
    precision = tp / (tp + fp) if tp + fp else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    out = {
        "tpr": tpr,
        "fpr": fpr,
        "precision": precision,
        "f1": f1,
        "n_dirty": n_pos,
        "n_clean": n_neg,
        "n_flagged": int(flag.sum()),
        "true_positives": tp,
        "false_positives": fp,
    }
    if score is not None:
        out["auroc"] = auroc(positive, score)
    return out


def align_truth(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Truth rows in the order of ``scores`` (joined on sample_id); every score row must have
    a truth row."""
    t = truth.set_index("sample_id")
    missing = ~scores["sample_id"].isin(t.index)
    if missing.any():
        from .errors import DataError

        first = scores.loc[missing, "sample_id"].iloc[0]
        raise DataError(f"the truth table has no row for {int(missing.sum())} sample(s), e.g. {first!r}")
    return t.loc[scores["sample_id"]].reset_index()


def audit_metrics(scores: pd.DataFrame, truth: pd.DataFrame, detectors: list[str]) -> dict:
    """Per detector and fused: metrics on all dirt, on poisoned rows only and on noisy rows
    only (TPR of that kind against the FPR on clean rows), and per attack."""
    t = align_truth(scores, truth)
    poisoned = t["is_poisoned"].to_numpy(bool)
    noisy = t["is_noisy"].to_numpy(bool)
    dirty = poisoned | noisy
    clean = ~dirty
    columns = [(d, f"{d}_flag", f"{d}_score") for d in detectors] + [("fused", "flagged", "dirty_score")]
    out: dict = {}
    for name, flag_col, score_col in columns:
        flag = scores[flag_col].to_numpy(bool)
        score = scores[score_col].to_numpy(np.float64)
        entry = {"all": detection_metrics(dirty, flag, score)}
        for kind, mask in (("poisoned", poisoned), ("noisy", noisy)):
            if mask.any():
                sel = mask | clean
                entry[kind] = detection_metrics(mask[sel], flag[sel], score[sel])
        for attack in sorted(set(t.loc[dirty, "attack"].astype(str)) - {""}):
            m = (t["attack"].astype(str) == attack).to_numpy()
            sel = m | clean
            entry[f"attack:{attack}"] = detection_metrics(m[sel], flag[sel], score[sel])
        out[name] = entry
    return out
