"""The report's figures, drawn with matplotlib and inlined as PNG data URIs, so that
report.html stays one self-contained file that opens offline.

Each function takes plain arrays or tables and returns the PNG's base64 text (``None``
when there is nothing to draw). matplotlib is imported lazily with its Agg backend: no
display is needed and importing the report costs nothing until a figure is drawn.
"""
from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pandas as pd

CLEAN, POISONED, NOISY, FLAGGED, MEDIAN = "#7a9cc6", "#d9534f", "#f0ad4e", "#d9534f", "#333333"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "axes.spines.top": False,
                         "axes.spines.right": False, "figure.dpi": 100})
    return plt


def _png(fig) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def class_sizes(names: list[str], rows: np.ndarray, flagged: np.ndarray, targets: set[str]) -> str:
    """Rows per class with the median marked and each class's excess over it in red; beside
    it, each class's flagged share. Classes named as backdoor targets are labelled so."""
    plt = _plt()
    rows = np.asarray(rows, np.float64)
    flagged = np.asarray(flagged, np.float64)
    med = float(np.median(rows)) if len(rows) else 0.0
    y = np.arange(len(names))
    height = 0.8 + 0.22 * len(names)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8.5, height), sharey=True, gridspec_kw={"width_ratios": [2, 1]})
    base = np.minimum(rows, med)
    ax.barh(y, base, color=CLEAN, label="rows")
    excess = np.maximum(rows - med, 0)
    ax.barh(y, excess, left=base, color=POISONED, label="excess over the median")
    ax.axvline(med, color=MEDIAN, ls="--", lw=1, label=f"median {med:g}")
    for i, (r, e) in enumerate(zip(rows, excess)):
        if e > 0.05 * max(med, 1):
            ax.text(r, i, f" {r / max(med, 1):.2f}x", va="center", fontsize=7)
    ax.set_yticks(y, [f"{n} (target)" if n in targets else n for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("Class sizes")
    ax.legend(loc="lower right", fontsize=7, frameon=False)
    share = 100 * flagged / np.maximum(rows, 1)
    ax2.barh(y, share, color=[POISONED if n in targets else "#999999" for n in names])
    ax2.set_xlabel("flagged %")
    ax2.set_title("Flagged share")
    return _png(fig)


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x[np.isfinite(x)]


def score_distributions(frame: pd.DataFrame, detectors: list[str], truth: pd.DataFrame | None) -> str | None:
    """One panel per detector: its raw score (not the rank-calibrated dirty score), split into
    clean / poisoned / noisy rows when a truth table is given, else into unflagged / flagged,
    with the lowest score the detector flagged marked as its threshold."""
    if not detectors:
        return None
    plt = _plt()
    cols = min(3, len(detectors))
    nrows = int(np.ceil(len(detectors) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.0 * cols, 2.1 * nrows), squeeze=False)
    for ax in axes.flat[len(detectors):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, detectors):
        score = frame[f"{name}_score"].to_numpy(np.float64)
        flag = frame[f"{name}_flag"].to_numpy(bool)
        fin = _finite(score)
        ax.set_title(name)
        if len(fin) == 0:
            ax.text(0.5, 0.5, "not scored", ha="center", va="center", transform=ax.transAxes)
            continue
        lo, hi = float(fin.min()), float(fin.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1, 41)
        if truth is not None:
            groups = [("clean", ~(truth["is_poisoned"] | truth["is_noisy"]).to_numpy(bool), CLEAN),
                      ("poisoned", truth["is_poisoned"].to_numpy(bool), POISONED),
                      ("noisy", truth["is_noisy"].to_numpy(bool), NOISY)]
        else:
            groups = [("not flagged", ~flag, CLEAN), ("flagged", flag, FLAGGED)]
        for label, mask, colour in groups:
            part = _finite(score[mask])
            if len(part):
                ax.hist(part, bins=edges, color=colour, alpha=0.65, label=f"{label} ({len(part)})", log=True)
        if flag.any() and np.isfinite(score[flag]).any():
            thr = float(np.nanmin(score[flag]))
            ax.axvline(thr, color=MEDIAN, ls="--", lw=1)
            ax.text(thr, ax.get_ylim()[1], f" flagged from {thr:.3g}", fontsize=6, va="top")
        ax.legend(fontsize=6, frameon=False)
        ax.set_xlabel("score")
    fig.tight_layout()
    return _png(fig)


def roc_pr(frame: pd.DataFrame, detectors: list[str], truth: pd.DataFrame) -> tuple[str | None, dict[str, Any]]:
    """ROC and precision-recall curves of every detector's raw score and the fused dirty
    score, one row of panels per kind of dirt in the truth table (poisoned rows, noisy rows;
    each against the clean rows). Returns the figure and {kind: {detector: (AUROC, AP)}}."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    poisoned = truth["is_poisoned"].to_numpy(bool)
    noisy = truth["is_noisy"].to_numpy(bool)
    clean = ~(poisoned | noisy)
    kinds = [(k, m) for k, m in (("poisoned", poisoned), ("noisy", noisy)) if m.any() and clean.any()]
    if not kinds:
        return None, {}
    plt = _plt()
    fig, axes = plt.subplots(len(kinds), 2, figsize=(8.5, 3.0 * len(kinds)), squeeze=False)
    areas: dict[str, Any] = {}
    columns = [(d, f"{d}_score") for d in detectors] + [("fused", "dirty_score")]
    for (kind, mask), (ax_roc, ax_pr) in zip(kinds, axes):
        sel = mask | clean
        y = mask[sel]
        areas[kind] = {}
        for name, col in columns:
            s = frame[col].to_numpy(np.float64)[sel]
            s = np.where(np.isfinite(s), s, np.nanmin(s[np.isfinite(s)]) if np.isfinite(s).any() else 0.0)
            auc, ap = float(roc_auc_score(y, s)), float(average_precision_score(y, s))
            areas[kind][name] = (auc, ap)
            fpr, tpr, _ = roc_curve(y, s)
            prec, rec, _ = precision_recall_curve(y, s)
            style = {"lw": 2.0, "color": "black"} if name == "fused" else {"lw": 1.1}
            ax_roc.plot(fpr, tpr, label=f"{name} AUROC {auc:.3f}", **style)
            ax_pr.plot(rec, prec, label=f"{name} AP {ap:.3f}", **style)
        ax_roc.plot([0, 1], [0, 1], color="#bbbbbb", lw=0.8, ls=":")
        ax_roc.set(xlabel="false positive rate (clean rows)", ylabel="true positive rate",
                   title=f"ROC: {kind} rows ({int(mask.sum())}) vs clean")
        ax_pr.axhline(y.mean(), color="#bbbbbb", lw=0.8, ls=":")
        ax_pr.set(xlabel="recall", ylabel="precision", title=f"Precision-recall: {kind} rows", ylim=(0, 1.02))
        for ax in (ax_roc, ax_pr):
            ax.legend(fontsize=6, frameon=False, loc="lower right" if ax is ax_roc else "upper right")
    fig.tight_layout()
    return _png(fig), areas


def trigger_panel(images: np.ndarray, flagged: np.ndarray, class_name: str,
                  regions: list[dict] | None = None) -> str | None:
    """What the trigger looks like in one target class: the mean of its flagged rows, the
    mean of its unflagged rows, their difference (a patch, a key image or a wash shows up),
    and, when SentiNet ran, how many flagged rows' decisive regions sat in each place."""
    flagged = np.asarray(flagged, bool)
    if flagged.sum() == 0 or (~flagged).sum() == 0:
        return None
    plt = _plt()
    x = images.astype(np.float64) / 255.0
    a, b = x[flagged].mean(0), x[~flagged].mean(0)
    diff = a - b
    panels = 4 if regions else 3
    fig, axes = plt.subplots(1, panels, figsize=(2.2 * panels, 2.4))
    axes[0].imshow(a, interpolation="nearest")
    axes[0].set_title(f"flagged mean ({int(flagged.sum())})")
    axes[1].imshow(b, interpolation="nearest")
    axes[1].set_title(f"unflagged mean ({int((~flagged).sum())})")
    mag = np.abs(diff).max() or 1.0
    axes[2].imshow(np.clip(0.5 + 0.5 * diff / mag, 0, 1), interpolation="nearest")
    axes[2].set_title(f"difference (x{0.5 / mag:.1f})")
    if regions:
        h, w = images.shape[1:3]
        heat = np.zeros((h, w))
        for r in regions:
            heat[r["top"]:r["top"] + r["size"], r["left"]:r["left"] + r["size"]] += r["rows"]
        im = axes[3].imshow(heat, cmap="magma", interpolation="nearest")
        axes[3].set_title("SentiNet regions (rows)")
        fig.colorbar(im, ax=axes[3], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"class {class_name}", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def training_curves(history: list[dict], title: str = "Training") -> str | None:
    """Loss and accuracy per epoch (and any per-epoch CA / ASR the run recorded). A run in
    stages (ABL: isolation, fine-tuning, unlearning) is drawn stage after stage on one axis
    of epochs run, each stage in its own colour."""
    if not history:
        return None
    plt = _plt()
    x = np.arange(1, len(history) + 1)
    stage = [str(h.get("stage", "")) for h in history]
    segments: list[tuple[str, np.ndarray]] = []
    for i, s in enumerate(stage):
        if segments and segments[-1][0] == s:
            segments[-1] = (s, np.append(segments[-1][1], i))
        else:
            segments.append((s, np.array([i])))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8.5, 2.6))
    for name, idx in segments:
        tag = f"{name}: " if name else ""
        line = ax1.plot(x[idx], [history[i].get("loss", np.nan) for i in idx], marker=".", label=f"{tag}train loss")
        ax2.plot(x[idx], [history[i].get("acc", np.nan) for i in idx], marker=".", color=line[0].get_color(),
                 label=f"{tag}train accuracy")
        for key, label, ls in (("clean_acc", "CA", "--"), ("asr", "ASR", ":")):
            if any(key in history[i] for i in idx):
                ax2.plot(x[idx], [history[i].get(key, np.nan) for i in idx], ls=ls, marker=".",
                         color=line[0].get_color(), label=f"{tag}{label}")
    for _, idx in segments[1:]:
        for ax in (ax1, ax2):
            ax.axvline(x[idx[0]] - 0.5, color="#bbbbbb", lw=0.8)
    ax1.set(xlabel="epoch (all stages)" if len(segments) > 1 else "epoch", title=f"{title}: loss")
    ax2.set(xlabel="epoch (all stages)" if len(segments) > 1 else "epoch", ylim=(0, 1.02), title=f"{title}: accuracy")
    for ax in (ax1, ax2):
        ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return _png(fig)
