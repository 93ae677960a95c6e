"""How far the audit's verdict is from the best its own views allow: a ceiling chosen WITH the
truth, on every cell that ``benchmarks/detectors.py --save DIR`` kept.

A missed target has two possible causes: the verdict's rules throw signal away, or the signal
is not in what the detection model sees. This script separates the two. It never changes a
rule and is not a result: the ceilings use the truth, which no audit has.

For each saved cell:

* injected rows (all-to-one attacks: the class their labels name): inside that class, a
  logistic regression trained on the truth and read out of fold (5 folds), on the dynamics
  detector's per-class feature PCs (what the verdict's split reads) and on the shared model's
  penultimate features; its ``precision@k`` with ``k`` the class's injected rows is the F1 of
  the best pick of the right size those coordinates allow with a linear cut, next to the
  verdict's poisoned F1 over all rows;
* wrong labels: the best noisy-row TPR at a clean-row FPR of at most ``--max-fpr`` (2%, the
  issue's bar) that any threshold reaches on the confident detector's score and on
  ``1 - p(label)`` of the shared model, next to the verdict's noisy TPR and clean FPR.

    python benchmarks/ceiling.py /tmp/s18/mx                 # one or more --save folders
    python benchmarks/ceiling.py /tmp/s18/mx --json ceiling.json

Seconds per cell (no training; 6,000-row slices).
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detectors import decide_saved  # noqa: E402


def split_ceiling(x: np.ndarray, injected: np.ndarray, folds: int = 5, seed: int = 0) -> dict:
    """Out-of-fold logistic regression of ``injected`` (bool per row) on ``x`` (rows, d),
    standardised; AUROC and precision@k (k = injected rows): the F1 of the best linear pick
    of the right size, read on rows the fit did not see. NaN where a part has < ``folds`` rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    y = np.asarray(injected, dtype=bool)
    k = int(y.sum())
    if k < folds or len(y) - k < folds:
        return {"rows": int(len(y)), "injected": k, "auroc": float("nan"), "precision_at_k": float("nan")}
    x = np.nan_to_num(np.asarray(x, dtype=np.float64))
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-9)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    p = cross_val_predict(LogisticRegression(C=1.0, max_iter=5000), x, y, cv=cv, method="predict_proba")[:, 1]
    top = np.argsort(-p, kind="stable")[:k]
    return {"rows": int(len(y)), "injected": k, "auroc": float(roc_auc_score(y, p)),
            "precision_at_k": float(y[top].mean())}


def threshold_ceiling(score: np.ndarray, positive: np.ndarray, negative: np.ndarray, max_fpr: float = 0.02) -> float:
    """The highest TPR on ``positive`` rows of any cut ``score >= t`` whose FPR on ``negative``
    rows is at most ``max_fpr`` (higher score = more suspect; NaN scores never flagged)."""
    s = np.where(np.isnan(score), -np.inf, np.asarray(score, dtype=np.float64))
    pos, neg = s[positive], np.sort(s[negative])[::-1]
    if not len(pos) or not len(neg):
        return float("nan")
    allowed = int(np.floor(max_fpr * len(neg)))
    # the cut just above the (allowed + 1)-th highest negative flags at most `allowed` of them
    cut = neg[allowed] if allowed < len(neg) else -np.inf
    return float((pos > cut).mean())


def cell_ceiling(saved: dict, max_fpr: float = 0.02) -> dict:
    """The verdict's figures and the ceilings of one saved cell (see the module docstring)."""
    results, ds, truth = saved["results"], saved["dataset"], saved["truth"]
    _, verdict, metrics = decide_saved(saved)
    metrics = metrics["fused"]
    poisoned = truth["is_poisoned"].to_numpy(bool)
    noisy = truth["is_noisy"].to_numpy(bool)
    clean = ~(poisoned | noisy)
    by_name = {r.name: r for r in results}
    out = {**{k: saved["cell"][k] for k in ("scenario", "rate", "seed", "asr")},
           "named": list(verdict.backdoor_classes), "clean_fpr": metrics["all"]["fpr"]}
    probe = saved.get("probe", {})
    if poisoned.any():
        labels = np.asarray(ds.labels)
        target = int(np.bincount(labels[poisoned]).argmax())
        rows = np.flatnonzero((labels == target) & ~np.asarray(ds.unreadable))
        out.update(target=ds.class_names[target], poisoned_f1=metrics["poisoned"]["f1"])
        views = {}
        dyn = by_name.get("dynamics")
        if dyn is not None and "feature_pcs" in dyn.arrays:
            views["pcs"] = np.asarray(dyn.arrays["feature_pcs"])[rows]
        if "features" in probe:
            views["features"] = np.asarray(probe["features"], dtype=np.float64)[rows]
        for name, x in views.items():
            c = split_ceiling(x, poisoned[rows])
            out[f"{name}_precision_at_k"], out[f"{name}_auroc"] = c["precision_at_k"], c["auroc"]
    if noisy.any():
        out["noisy_tpr"] = metrics["noisy"]["tpr"]
        if "confident" in by_name:
            out["confident_ceiling"] = threshold_ceiling(by_name["confident"].score, noisy, clean, max_fpr)
        if "logits" in probe:
            z = np.asarray(probe["logits"], dtype=np.float64)
            z = np.exp(z - z.max(1, keepdims=True))
            p = z / z.sum(1, keepdims=True)
            out["p_label_ceiling"] = threshold_ceiling(1.0 - p[np.arange(len(p)), ds.labels], noisy, clean, max_fpr)
    return out


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    return f"{100 * v:.1f}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict], max_fpr: float) -> str:
    head = ("| cell | ASR % | named | verdict: poisoned F1 % | ceiling P@k % (PCs / features) | AUROC (PCs / features) "
            f"| verdict: noisy TPR % | ceiling TPR % at FPR <= {100 * max_fpr:g}% (confident / 1 - p) | clean FPR % |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        auroc = " / ".join(f"{r[k]:.3f}" if k in r and not np.isnan(r[k]) else "-"
                           for k in ("pcs_auroc", "features_auroc")) if "poisoned_f1" in r else "-"
        ceiling = (f"{fmt(r.get('pcs_precision_at_k'))} / {fmt(r.get('features_precision_at_k'))}"
                   if "poisoned_f1" in r else "-")
        noisy = (f"{fmt(r.get('confident_ceiling'))} / {fmt(r.get('p_label_ceiling'))}" if "noisy_tpr" in r else "-")
        lines.append(f"| {r['scenario']}-{r['rate']:g}-s{r['seed']} | {fmt(r['asr'])} | {' '.join(r['named']) or '-'} "
                     f"| {fmt(r.get('poisoned_f1'))} | {ceiling} | {auroc} | {fmt(r.get('noisy_tpr'))} | {noisy} "
                     f"| {fmt(r['clean_fpr'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="folders of benchmarks/detectors.py --save")
    p.add_argument("--max-fpr", type=float, default=0.02, help="the clean-row FPR bar of the wrong-label ceiling")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    paths = sorted(q for f in args.folders for q in f.glob("*.pkl"))
    if not paths:
        print(f"error: no saved cells (*.pkl) in {', '.join(map(str, args.folders))}", file=sys.stderr)
        return 2
    rows = []
    for path in paths:
        with path.open("rb") as f:
            rows.append(cell_ceiling(pickle.load(f), args.max_fpr))
        print(f"{path.stem}: done", file=sys.stderr, flush=True)
    print(markdown(rows, args.max_fpr))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
