"""How well each per-row signal tells the injected rows from the clean rows INSIDE the
target class, on the cells a ``benchmarks/detectors.py --save DIR`` run kept (no training).

The verdict names the target class from class-level evidence; this measures the second
step, picking the injected rows inside it. Per saved cell with poisoned rows, per signal:
the within-class AUROC (higher score = injected; 0.5 = chance; below 0.5 = the signal
points the other way, so the direction has to be chosen from the data). Signals:

- the training-dynamics detector's parts (``conf``, ``aum``, ``early``, ``middle``,
  ``knn``), its split's anomalous posterior (``dyn_score``) and the posterior of its surer
  part (``dyn_surer``);
- ``agpd``, ``sentinet``, ``confident``: the detectors' scores;
- from the saved penultimate features of the shared detection model (the probe that
  ``--save`` keeps): ``spectral`` (squared projection on the class's top singular vector,
  Tran et al. 2018), ``ac`` (distance to the other 2-means cluster's centre minus to its
  own, smaller cluster positive; Chen et al. 2018), ``nearest_other`` (cosine similarity to
  the nearest other class's centroid), ``centroid`` (cosine distance to its class's
  centroid).

Only a measurement: truth is read here to score the signals, never by a detector.

    python benchmarks/row_signals.py runs/bench-detectors           # inside the target class
    python benchmarks/row_signals.py runs/bench-detectors --noise   # wrong labels
"""
from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cleansers.dynamics import SIGNALS  # noqa: E402


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.nan_to_num(s)))


def feature_signals(features: np.ndarray, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Per row of class ``k``: signals from the penultimate features (see the module doc)."""
    f = features.astype(np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    rows = labels == k
    x = f[rows]
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    out = {"spectral": (centred @ vt[0]) ** 2}
    from sklearn.cluster import KMeans

    pcs = centred @ vt[:10].T
    km = KMeans(2, n_init=5, random_state=0).fit(pcs)
    d = km.transform(pcs)
    small = int(np.argmin(np.bincount(km.labels_, minlength=2)))
    out["ac"] = d[:, 1 - small] - d[:, small]
    cents = np.stack([f[labels == c].mean(0) for c in np.unique(labels)])
    cents = cents / np.linalg.norm(cents, axis=1, keepdims=True)
    others = np.array([c for c in np.unique(labels) if c != k])
    sims = x @ cents.T
    idx = {c: i for i, c in enumerate(np.unique(labels))}
    out["nearest_other"] = sims[:, [idx[c] for c in others]].max(1)
    out["centroid"] = 1.0 - sims[:, idx[k]]
    return out


def verdict_side(saved: dict, k: int) -> np.ndarray:
    """The training-dynamics posterior oriented the way the verdict orients it in class
    ``k`` (:func:`cleansers.verdict._injected_posterior`): what its row pick ranks by."""
    from cleansers.verdict import VerdictConfig, _class_signals, _injected_posterior, _vouches

    ds, results = saved["dataset"], saved["results"]
    label_flags = np.zeros(len(ds), dtype=bool)
    for r in results:
        if r.name == "confident":
            label_flags |= r.flag
    signals, _ = _class_signals(ds, results, label_flags, VerdictConfig())
    dyn = next(r for r in results if r.name == "dynamics")
    specialists = [r for r in results if r.info.get("class_evidence") and _vouches(r, k)]
    return _injected_posterior(ds, k, dyn, specialists, label_flags, signals[k])[0]


def cell_signals(saved: dict, k: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ds = saved["dataset"]
    rows = (ds.labels == k) & ~ds.unreadable
    res = {r.name: r for r in saved["results"]}
    out: dict[str, np.ndarray] = {}
    dyn = res.get("dynamics")
    if dyn is not None:
        sig = dyn.arrays["signals"]
        for j, name in enumerate(SIGNALS):
            out[name] = sig[rows, j]
        out["dyn_score"] = dyn.score[rows]
        out["dyn_surer"] = np.nan_to_num(dyn.arrays["posterior_confident"])[rows]
    for name in ("agpd", "sentinet", "confident", "abl"):
        if name in res:
            out[name] = res[name].score[rows]
    if dyn is not None:
        out["verdict_side"] = verdict_side(saved, k)[rows]
    feats = saved.get("probe", {}).get("features")
    if feats is not None:
        out.update(feature_signals(feats, ds.labels, k))
    return rows, out


def tpr_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float) -> float:
    """The share of positives scored above the clean rows' (1 - fpr) quantile: the best TPR
    at that FPR with the threshold chosen with the truth (an upper bound for any rule)."""
    neg = np.sort(s[~y])[::-1]
    return float((s[y] > neg[min(len(neg) - 1, int(np.floor(fpr * len(neg))))]).mean())


def noise_table(folder: Path) -> None:
    """Per saved cell with wrong labels: AUROC of each wrong-label signal and its best noisy
    TPR at 1% / 2% clean FPR (threshold chosen with the truth), against the audit's rule."""
    from cleansers.confident import find_label_issues

    print("| cell | accuracy | AUROC 1-p / -AUM / 1-knn / confident | TPR at FPR 1% / 2%: 1-p | -AUM | confident "
          "| rule TPR at FPR | cleanlab & p<0.05 only | cleanlab & p<0.1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(folder.glob("*.pkl")):
        with path.open("rb") as f:
            saved = pickle.load(f)
        t, ds = saved["truth"], saved["dataset"]
        res = {r.name: r for r in saved["results"]}
        logits = saved.get("probe", {}).get("logits")
        if logits is None or "confident" not in res or "dynamics" not in res:
            continue
        z = np.exp(logits - logits.max(1, keepdims=True))
        probs = (z / z.sum(1, keepdims=True)).astype(np.float64)
        p = probs[np.arange(len(ds)), ds.labels]
        sig = res["dynamics"].arrays["signals"]
        aum, knn = sig[:, SIGNALS.index("aum")], sig[:, SIGNALS.index("knn")]
        noisy, poisoned = t["is_noisy"].to_numpy(bool), t["is_poisoned"].to_numpy(bool)
        clean = ~(noisy | poisoned)
        found, _ = find_label_issues(probs, ds.labels)
        rule = res["confident"].flag

        def rate(f: np.ndarray) -> str:
            return (f"{f[noisy].mean():.2f} at {100 * f[clean].mean():.1f}%" if noisy.any()
                    else f"- at {100 * f[clean].mean():.1f}%")
        loose = [found & (p < 0.05), found & (p < 0.1) & (aum < 0) & (knn <= 0.5)]
        if not noisy.any():
            print(f"| {path.stem} | {res['confident'].info.get('accuracy')} | - | - | - | - | {rate(rule)} | "
                  f"{rate(loose[0])} | {rate(loose[1])} |")
            continue
        sel = noisy | clean
        y = noisy[sel]
        scores = {"1-p": 1 - p, "-aum": -aum, "1-knn": 1 - knn, "confident": res["confident"].score}
        aucs = " / ".join(f"{auroc(y, v[sel]):.3f}" for v in scores.values())
        tprs = " | ".join(f"{tpr_at_fpr(y, scores[k][sel], 0.01):.2f} / {tpr_at_fpr(y, scores[k][sel], 0.02):.2f}"
                          for k in ("1-p", "-aum", "confident"))
        print(f"| {path.stem} | {res['confident'].info.get('accuracy')} | {aucs} | {tprs} | {rate(rule)} | "
              f"{rate(loose[0])} | {rate(loose[1])} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--noise", action="store_true", help="the wrong-label signals instead (cells with label noise)")
    args = p.parse_args(argv)
    if args.noise:
        noise_table(args.folder)
        return 0
    table = []
    names: list[str] = []
    for path in sorted(args.folder.glob("*.pkl")):
        with path.open("rb") as f:
            saved = pickle.load(f)
        poisoned = saved["truth"]["is_poisoned"].to_numpy(bool)
        if not poisoned.any():
            continue
        ds = saved["dataset"]
        k = int(np.bincount(ds.labels[poisoned]).argmax())
        rows, sig = cell_signals(saved, k)
        y = poisoned[rows]
        entry = {"cell": path.stem, "share": float(y.mean())}
        for name, s in sig.items():
            entry[name] = auroc(y, s)
            if name not in names:
                names.append(name)
        table.append(entry)
    print("| cell | injected share of class | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for e in table:
        print(f"| {e['cell']} | {e['share']:.2f} | " + " | ".join(f"{e.get(n, float('nan')):.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
