"""The decisions of the CLIP detectors from embeddings alone (no model here), so the logic is
tested on planted embeddings.

Zero-shot (``clip``): probabilities over the class names, p = softmax(scale * image . text + b),
with a per-class bias b fitted so that the mean predicted distribution equals the given
labels' class frequencies (zero-shot CLIP favours some class names over others; the bias
takes that out, so each class is judged against its own share: the per-class calibration).
Score = 1 - p(given label). Flags: cleanlab's ``find_label_issues`` on those probabilities
(``filter_by="both"``: the confident-joint count per class pair AND the prediction is another
class), a data-driven cut with per-class thresholds, never a fixed share. Withheld (nothing
flagged, said in the finding) when the zero-shot accuracy against the given labels is below
``min_accuracy``: CLIP does not know these class names (e.g. "class_7"); use ``clip_knn``.

Neighbours (``clip_knn``): each row's k nearest neighbours by cosine in the image embedding
space (itself left out) vote; the vote shares (smoothed) are out-of-sample probabilities,
handed with the embeddings to cleanlab's Datalab (label issues from those probabilities,
near-duplicate sets from the features). A row is flagged when Datalab finds a label issue
AND at most ``max_agreement`` of its neighbours carry its label. Needs no class names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..confident import find_label_issues


@dataclass
class Decision:
    score: np.ndarray
    flag: np.ndarray
    suggested: np.ndarray
    info: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def calibrate_to_labels(logits: np.ndarray, labels: np.ndarray, num_classes: int,
                        iters: int = 200, tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, bias): softmax(logits + b) whose column means match the labels' class
    frequencies (a fixed-point iteration, b += log(prior) - log(mean prediction))."""
    n = len(labels)
    prior = np.bincount(labels, minlength=num_classes).astype(np.float64) / max(n, 1)
    prior = np.maximum(prior, 0.1 / max(n, 1))
    prior /= prior.sum()
    b = np.zeros(num_classes)
    p = _softmax(logits)
    for _ in range(iters):
        step = np.log(prior) - np.log(np.maximum(p.mean(0), 1e-300))
        b += step
        b -= b.mean()  # softmax ignores a constant; keep the bias centred
        p = _softmax(logits + b)
        if np.abs(step).max() < tol:
            break
    return p, b


def zero_shot_decision(image_emb: np.ndarray, class_emb: np.ndarray, labels: np.ndarray, logit_scale: float, *,
                       filter_by: str = "both", min_accuracy: float = 0.5, suggest_min: float = 0.5,
                       class_names: list[str] | None = None) -> Decision:
    labels = np.asarray(labels, dtype=np.int64)
    n, k = len(labels), len(class_emb)
    logits = float(logit_scale) * (np.asarray(image_emb, np.float64) @ np.asarray(class_emb, np.float64).T)
    raw = _softmax(logits)
    probs, bias = calibrate_to_labels(logits, labels, k)
    p_label = probs[np.arange(n), labels]
    pred = probs.argmax(1)
    accuracy = float((pred == labels).mean()) if n else float("nan")
    raw_accuracy = float((raw.argmax(1) == labels).mean()) if n else float("nan")
    found, other = find_label_issues(probs, labels, filter_by)
    flag = found & (pred != labels)
    withheld = not accuracy >= min_accuracy
    if withheld:
        flag = np.zeros(n, dtype=bool)
    confident = probs[np.arange(n), other] >= suggest_min
    suggested = np.where(flag & confident, other, -1)
    names = class_names or [str(c) for c in range(k)]
    pairs = _pair_counts(labels[flag], suggested[flag], names)
    finding = (f"withheld {int((found & (pred != labels)).sum())} flags: zero-shot accuracy {accuracy:.3f} < "
               f"{min_accuracy} against the given labels (CLIP does not know these class names or images; "
               "clip_knn needs no names)" if withheld else
               f"{int(flag.sum())} rows whose image CLIP matches another class name better (cleanlab on the "
               f"calibrated zero-shot probabilities, filter {filter_by}; zero-shot accuracy {accuracy:.3f})"
               + (f"; mostly {pairs}" if pairs else ""))
    info = {"zero_shot_accuracy": round(accuracy, 4), "uncalibrated_accuracy": round(raw_accuracy, 4),
            "withheld": bool(withheld), "min_accuracy": min_accuracy, "cleanlab_issues": int(found.sum()),
            "filter_by": filter_by, "logit_scale": round(float(logit_scale), 4),
            "class_bias": {names[c]: round(float(bias[c]), 4) for c in range(k)}, "finding": finding}
    return Decision(1.0 - p_label, flag, suggested, info, {"clip_p_label": p_label})


def _pair_counts(given: np.ndarray, suggested: np.ndarray, names: list[str], top: int = 3) -> str:
    pairs: dict[tuple[int, int], int] = {}
    for g, s in zip(given, suggested):
        if s >= 0:
            pairs[(int(g), int(s))] = pairs.get((int(g), int(s)), 0) + 1
    best = sorted(pairs.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{names[g]}->{names[s]} {c}" for (g, s), c in best)


def neighbour_votes(emb: np.ndarray, labels: np.ndarray, num_classes: int, k: int = 10,
                    smoothing: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vote probabilities (N, K), agreement with the given label, neighbour indices (N, k)):
    each row's k nearest other rows by cosine similarity (exact, in blocks)."""
    emb = np.asarray(emb, np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    n = len(emb)
    k = int(min(max(1, k), max(1, n - 1)))
    idx = np.zeros((n, k), dtype=np.int64)
    for a in range(0, n, 2048):
        sim = emb[a:a + 2048] @ emb.T
        sim[np.arange(len(sim)), np.arange(a, a + len(sim))] = -np.inf  # itself left out
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k] if n - 1 > k else np.argsort(-sim, axis=1)[:, :k]
        order = np.take_along_axis(sim, part, 1).argsort(1)[:, ::-1]
        idx[a:a + len(sim)] = np.take_along_axis(part, order, 1)
    votes = np.zeros((n, num_classes))
    np.add.at(votes, (np.repeat(np.arange(n), k), labels[idx].reshape(-1)), 1.0)
    agreement = votes[np.arange(n), labels] / k
    probs = (votes + smoothing) / (k + smoothing * num_classes)
    return probs, agreement, idx


def knn_decision(emb: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = 10, max_agreement: float = 0.5,
                 min_accuracy: float = 0.5, suggest_min: float = 0.5, filter_by: str = "prune_by_noise_rate",
                 class_names: list[str] | None = None, near_duplicates: bool = True) -> Decision:
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    names = class_names or [str(c) for c in range(num_classes)]
    probs, agreement, idx = neighbour_votes(emb, labels, num_classes, k)
    pred = probs.argmax(1)
    accuracy = float((pred == labels).mean()) if n else float("nan")
    found, other = _datalab_label_issues(probs, labels, emb, filter_by)
    dup_info = _near_duplicates(emb, labels) if near_duplicates else {}
    flag = found & (agreement <= max_agreement)
    withheld = not accuracy >= min_accuracy
    if withheld:
        flag = np.zeros(n, dtype=bool)
    other_share = (labels[idx] == other[:, None]).mean(1)
    suggested = np.where(flag & (other_share >= suggest_min), other, -1)
    pairs = _pair_counts(labels[flag], suggested[flag], names)
    finding = (f"withheld {int((found & (agreement <= max_agreement)).sum())} flags: neighbour-vote accuracy "
               f"{accuracy:.3f} < {min_accuracy} (the embedding does not separate these classes)" if withheld else
               f"{int(flag.sum())} rows whose {k} nearest CLIP neighbours mostly carry another label (Datalab label "
               f"issues on the neighbour votes, agreement <= {max_agreement}; vote accuracy {accuracy:.3f})"
               + (f"; mostly {pairs}" if pairs else ""))
    if dup_info.get("conflicting_sets"):
        finding += f"; {dup_info['conflicting_sets']} near-duplicate sets carry different labels"
    info = {"vote_accuracy": round(accuracy, 4), "withheld": bool(withheld), "k": k, "max_agreement": max_agreement,
            "min_accuracy": min_accuracy, "datalab_label_issues": int(found.sum()), "filter_by": filter_by,
            **dup_info, "finding": finding}
    return Decision(1.0 - agreement + 1e-3 * (1.0 - probs[np.arange(n), labels]), flag, suggested, info,
                    {"clip_knn_agreement": agreement})


def _datalab(labels: np.ndarray):
    from cleanlab import Datalab

    return Datalab(data={"label": labels}, label_name="label", verbosity=0)


def _datalab_label_issues(probs: np.ndarray, labels: np.ndarray, emb: np.ndarray,
                          filter_by: str) -> tuple[np.ndarray, np.ndarray]:
    """(is_label_issue, most probable other class) from cleanlab's Datalab on the vote
    probabilities (falls back to cleanlab.filter when Datalab's ``datasets`` is missing)."""
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -np.inf
    present = np.unique(labels)
    if len(present) < 2:
        return np.zeros(len(labels), dtype=bool), other.argmax(1)
    try:
        lab = _datalab(np.searchsorted(present, labels))
    except ImportError:
        return find_label_issues(probs, labels, filter_by)
    sub = probs[:, present] / probs[:, present].sum(1, keepdims=True)
    # n_jobs=1: no forked pool beside Prefect's threads (see cleansers.confident)
    lab.find_issues(pred_probs=sub, issue_types={"label": {"clean_learning_kwargs": {
        "find_label_issues_kwargs": {"filter_by": filter_by, "n_jobs": 1}}}})
    issues = lab.get_issues("label")["is_label_issue"].to_numpy(dtype=bool)
    return issues, other.argmax(1)


def _near_duplicates(emb: np.ndarray, labels: np.ndarray) -> dict:
    """Datalab's near-duplicate sets on the embeddings: how many, and how many mix labels."""
    try:
        lab = _datalab(labels)
    except ImportError:
        return {}
    lab.find_issues(features=np.asarray(emb, np.float32), issue_types={"near_duplicate": {}})
    frame = lab.get_issues("near_duplicate")
    dup = frame["is_near_duplicate_issue"].to_numpy(dtype=bool)
    sets = frame["near_duplicate_sets"].to_numpy()
    conflicting = 0
    for i in np.flatnonzero(dup):
        others = [int(j) for j in sets[i]]
        if others and any(labels[j] != labels[i] for j in others) and i < min(others):
            conflicting += 1
    return {"near_duplicate_rows": int(dup.sum()), "conflicting_sets": int(conflicting)}
