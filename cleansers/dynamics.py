"""``dynamics``: how each row was learned, and whether its class holds a sub-population that
was learned differently (a ranker; the verdict decides what its split means).

Poisoned rows do not learn like the clean rows of their (target) class. When the detection
model learns the trigger, the injected rows are fitted earlier and with larger margins than
any clean row of the class, and their neighbours in feature space share their label (the
trigger is one shared feature); when it does not learn the trigger, the injected rows look
like wrong labels: small or negative margins and neighbours of other classes. Either way
the class holds two populations. Per row, from the shared detection model at no extra
training cost:

- ``conf``: the eval-mode probability of the row's label;
- ``aum``: the area under the margin (Pleiss et al., NeurIPS 2020): the mean over epochs of
  the training margin, logit of the label minus the largest other logit, recorded in the
  batch the row was trained in;
- ``early`` / ``middle``: the mean training margin over the epochs at 10-20% and 40-50% of
  training (how soon a row is fitted; a clean-label SIG target is fitted in the first
  epochs, so its class's early tail names it);
- ``knn``: the share of its ``k`` nearest neighbours (cosine, penultimate features) that
  carry its label.

Per class, a two-component Gaussian mixture on these five signals (robustly standardised
within the class) splits the rows; the component whose mean profile lies farther from the
other classes' class-mean profiles (robust z over the other classes) is the anomalous one.
Score = the posterior of that component, in [0, 1]; ``arrays["posterior_confident"]`` is
the posterior of the component the model is surer of, for the verdict's choice of side.
``info["classes"]`` holds, per class, the split (sizes, the two distances) and each
signal's class mean as a robust z over the classes. The detector flags nothing: a split exists in every class
(hard and easy rows), so only the verdict (cleansers/verdict.py), with a class named by
independent evidence, turns the anomalous component of that class into flags.

Measured (6,000-row CIFAR-10 slice, 10% all-to-one, small CNN, seed 0; probe on the same
signals): choosing the component this way, the split's F1 on the target class was 0.96
(blended smooth key), 0.96 (4x4 patch), 0.92 (SIG: 509 of its 600 rows), 0.86 (Trojan-style
watermark), 0.78 (BadNets), 0.70 (WaNet, trigger not learned), 0.65 (low-frequency);
docs/benchmarks.md has the audit's matrix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.dataset import ImageDataset

from .base import DETECTORS, AuditContext, Detector, DetectorResult
from .detection_model import ModelSpec, get_detection_model, model_features, model_logits

SIGNALS = ("conf", "aum", "early", "middle", "knn")


def tail_strength(tail: float, cfg: "DynamicsConfig") -> str:
    """The verdict strength of an ``early_tail`` share (see :class:`DynamicsConfig`)."""
    return "strong" if tail >= cfg.tail_strong else "weak" if tail >= cfg.tail_weak else "none"


@dataclass
class DynamicsConfig:
    """``k`` neighbours for the label agreement (20); ``seed_restarts`` of the per-class
    two-component mixture (the best lower bound is kept); ``min_rows`` a class needs to be
    split (smaller classes score 0). Class evidence for the verdict, ``early_tail``: the
    share of a class's rows fitted earlier (training margin over the first 10-20% of epochs)
    than ``tail_quantile`` (99%) of the other classes' rows; weak from ``tail_weak`` (0.10),
    strong from ``tail_strong`` (0.30). Measured on 6,000-row CIFAR-10 slices (seed 0):
    SIG's target 0.325 (5%) and 0.63 (10%), a 4x4 patch's 0.27 / 0.44, BadNets' 0.06 / 0.11,
    clean classes of every case at most 0.06; but clean digits' class 0 (an easy class, not a
    trigger) reached 0.07-0.26 over 15 runs (model seeds, threads, 16 and 32 px), and a strong
    bar at 0.20 named it on a clean set. So the strong bar sits between the two (thin margins
    on both sides: 0.26 and 0.325): by this signal alone an intrinsically easy class cannot be
    told from a clean-label target, and a class between the bars needs a second signal.
    How sharp a class's split is (``sharp`` in
    ``info["classes"]``) is recorded but is no evidence: clean digits classes split with
    every row at posterior > 0.95.
    ``feature_pcs``: per class, each row's coordinates on the class's top principal
    components of the model's (L2-normalised) penultimate features (20; 0 = none), kept in
    ``arrays["feature_pcs"]`` for the verdict's refinement of the rows it picks in a named
    class (:func:`cleansers.verdict.refine_in_features`).
    ``arrays["second_choice"]``: each row's most likely class other than its own label
    under the detection model (the verdict's orientation of a split in a named class: the
    injected rows of an all-to-one attack are images of every other class, so their second
    choices spread over the other classes; a class's own images lean on a few look-alikes).
    ``arch``/``epochs``: the shared detection model."""

    k: int = 20
    feature_pcs: int = 20
    seed_restarts: int = 3
    tail_quantile: float = 0.99
    tail_weak: float = 0.10
    tail_strong: float = 0.30
    min_rows: int = 40
    arch: str = "auto"
    epochs: int | None = None
    chunk: int = 2048


def _robust(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    med = np.median(x, axis=axis, keepdims=True)
    mad = 1.4826 * np.median(np.abs(x - med), axis=axis, keepdims=True)
    return med, np.where(mad > 1e-12, mad, 1.0)


def robust_z(values: np.ndarray) -> np.ndarray:
    """(v - median) / (1.4826 MAD) over the entries of a 1-d array (0 where MAD is 0)."""
    v = np.asarray(values, dtype=np.float64)
    med, mad = _robust(v)
    return (v - med) / mad


def epoch_window(margins: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The mean margin over the epochs from ``lo`` to ``hi`` (fractions of training)."""
    e = margins.shape[0]
    a = min(e - 1, int(np.floor(lo * e)))
    b = max(a + 1, min(e, int(np.ceil(hi * e))))
    with np.errstate(invalid="ignore"):
        return np.nanmean(margins[a:b], axis=0)


def knn_agreement(features: np.ndarray, labels: np.ndarray, k: int, chunk: int = 2048,
                  device: torch.device | None = None) -> np.ndarray:
    """Share of each row's ``k`` nearest neighbours (cosine; the row itself left out) that
    carry its label. Chunked, so 50,000 rows never build the full similarity matrix."""
    n = len(features)
    if n <= 1:
        return np.ones(n)
    k = max(1, min(k, n - 1))
    dev = device or torch.device("cpu")
    f = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32, device=dev), dim=1)
    y = torch.as_tensor(labels, device=dev)
    out = torch.empty(n, dtype=torch.float64, device=dev)
    for s in range(0, n, chunk):
        sims = f[s:s + chunk] @ f.T
        rows = torch.arange(s, min(n, s + chunk), device=dev)
        sims[torch.arange(len(rows), device=dev), rows] = float("-inf")
        nn_idx = sims.topk(k, dim=1).indices
        out[s:s + chunk] = (y[nn_idx] == y[rows][:, None]).double().mean(1)
    return out.cpu().numpy()


def row_signals(ds: ImageDataset, logits: np.ndarray, margins: np.ndarray, features: np.ndarray, k: int,
                chunk: int = 2048, device: torch.device | None = None) -> np.ndarray:
    """(N, 5) signals in :data:`SIGNALS` order."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    conf = p[np.arange(len(ds)), ds.labels]
    with np.errstate(invalid="ignore"):
        aum = np.nanmean(margins, axis=0)
    cols = [conf, aum, epoch_window(margins, 0.1, 0.2), epoch_window(margins, 0.4, 0.5),
            knn_agreement(features, ds.labels, k, chunk, device)]
    return np.nan_to_num(np.stack(cols, axis=1).astype(np.float64))


def second_choice(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row, the class with the highest logit other than the row's own label (int64)."""
    z = np.array(logits, dtype=np.float64, copy=True)
    if len(z) == 0 or z.shape[1] < 2:
        return np.full(len(z), -1, dtype=np.int64)
    z[np.arange(len(z)), np.clip(labels, 0, z.shape[1] - 1)] = -np.inf
    return z.argmax(1).astype(np.int64)


def split_class(x: np.ndarray, reference: np.ndarray, restarts: int, seed: int) -> tuple[np.ndarray, dict]:
    """Two-component mixture on one class's (n, d) signals; returns (posterior of the
    anomalous component per row, info). ``reference`` (m, d) holds the other classes'
    class-mean profiles: the anomalous component is the one whose mean lies farther from
    them (robust z per signal over the m classes, Euclidean norm)."""
    from sklearn.mixture import GaussianMixture

    med, mad = _robust(x)
    xs = (x - med) / mad
    best = None
    for r in range(restarts):
        g = GaussianMixture(2, covariance_type="full", reg_covar=1e-3, random_state=seed + r).fit(xs)
        if best is None or g.lower_bound_ > best.lower_bound_:
            best = g
    post = best.predict_proba(xs)
    assign = post.argmax(1)
    ref_med, ref_mad = _robust(reference)
    dist = []
    for j in range(2):
        rows = assign == j
        dist.append(float(np.linalg.norm((x[rows].mean(0) - ref_med[0]) / ref_mad[0])) if rows.any() else 0.0)
    j = int(np.argmax(dist))
    # the component the model is more sure of (higher mean p(label)): "learned" side
    confident = int(np.argmax([x[assign == c, 0].mean() if (assign == c).any() else -np.inf for c in range(2)]))
    return post[:, j], {"anomalous_rows": int((assign == j).sum()), "distance": round(dist[j], 3),
                        "other_distance": round(dist[1 - j], 3),
                        "sharp": round(float(np.mean(post.max(1) > 0.95)), 4),
                        "anomalous_is_confident": bool(j == confident),
                        "confident_rows": int((assign == confident).sum()),
                        "_post_confident": post[:, confident]}


def class_feature_pcs(features: np.ndarray, labels: np.ndarray, n_pcs: int, min_rows: int = 40) -> np.ndarray:
    """(N, n_pcs): per class of at least ``min_rows`` rows (and more than ``n_pcs``), each
    row's coordinates on the top ``n_pcs`` principal components of its class's L2-normalised
    features, centred on the class mean (zeros elsewhere)."""
    f = np.asarray(features, dtype=np.float64)
    out = np.zeros((len(f), max(0, n_pcs)))
    if n_pcs <= 0 or len(f) == 0:
        return out
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        if len(rows) < max(min_rows, n_pcs + 2):
            continue
        x = f[rows] - f[rows].mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        d = min(n_pcs, vt.shape[0])
        out[rows, :d] = x @ vt[:d].T
    return out


def shared_signals(data: ImageDataset, ctx: AuditContext, spec: ModelSpec, k: int = 20, chunk: int = 2048):
    """(detection model, (N, 5) signals) for ``data``, computed once per audit and kept in
    ``ctx.model_cache`` (the label-noise detector reads the same numbers)."""
    dm = get_detection_model(data, ctx, spec)
    if dm.margins is None:
        raise RuntimeError("dynamics: the detection model was trained without recording margins")
    key = ("dynamics", data.fingerprint, dm.spec.key(), ctx.seed, int(k))
    if key not in ctx.model_cache:
        ctx.model_cache[key] = row_signals(data, model_logits(data, dm, ctx), dm.margins,
                                           model_features(data, dm, ctx), k, chunk, dm.device)
    return dm, ctx.model_cache[key]


@DETECTORS.register("dynamics")
class Dynamics(Detector):
    name = "dynamics"
    kind = "ranker"
    Config = DynamicsConfig

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg: DynamicsConfig = self.config
        n = len(data)
        if n == 0:
            return DetectorResult(self.name, np.zeros(0), np.zeros(0, bool))
        dm, signals = shared_signals(data, ctx, ModelSpec.from_options(cfg.arch, cfg.epochs), cfg.k, cfg.chunk)
        K = data.num_classes
        present = [c for c in range(K) if (data.labels == c).sum() > 0]
        means = np.zeros((K, signals.shape[1]))
        for c in present:
            means[c] = signals[data.labels == c].mean(0)
        z = {name: np.zeros(K) for name in SIGNALS}
        if len(present) >= 3:
            for j, name in enumerate(SIGNALS):
                z[name][present] = robust_z(means[present, j])
        score = np.zeros(n)
        post_conf = np.zeros(n)
        classes = {}
        for c in present:
            rows = np.flatnonzero(data.labels == c)
            entry = {"rows": int(len(rows)), **{f"{name}_z": round(float(z[name][c]), 3) for name in SIGNALS},
                     **{f"{name}_mean": round(float(means[c, j]), 4) for j, name in enumerate(SIGNALS)}}
            others = [k for k in present if k != c]
            if len(rows) >= cfg.min_rows and len(others) >= 2:
                post, info = split_class(signals[rows], means[others], cfg.seed_restarts, ctx.seed)
                score[rows] = post
                post_conf[rows] = info.pop("_post_confident")
                entry.update(info)
            classes[str(c)] = entry
        evidence = []
        early = signals[:, SIGNALS.index("early")]
        for c in present:
            e = classes[str(c)]
            rows = data.labels == c
            others = early[~rows]
            tail = float((early[rows] > np.quantile(others, cfg.tail_quantile)).mean()) if len(others) else 0.0
            e["early_tail"] = round(tail, 4)
            evidence.append({"class": int(c), "signal": "early_tail", "value": round(tail, 4),
                             "threshold": cfg.tail_weak,
                             "strength": tail_strength(tail, cfg),
                             "detail": f"share of the class fitted earlier than {cfg.tail_quantile:.0%} of the "
                                       f"other classes' rows (class-mean early-margin z {e['early_z']:.1f})"})
        arrays = {"signals": signals, "posterior_confident": post_conf,
                  "second_choice": second_choice(model_logits(data, dm, ctx), data.labels)}
        if cfg.feature_pcs > 0:
            arrays["feature_pcs"] = class_feature_pcs(model_features(data, dm, ctx), data.labels, cfg.feature_pcs,
                                                      cfg.min_rows)
        return DetectorResult(self.name, score, np.zeros(n, dtype=bool), None, arrays=arrays, info={
            "model": dm.describe(), "signals": list(SIGNALS), "classes": classes, "class_evidence": evidence,
            "finding": "per-class split of how rows were learned (a ranker: the verdict uses it only in a class "
                       "named by other evidence)"})
