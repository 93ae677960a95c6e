"""``confident``: wrong labels, with suggested labels, by confident learning (Northcutt,
Jiang & Chuang, JAIR 2021) through **cleanlab** (``cleanlab.filter.find_label_issues``,
``filter_by="prune_by_noise_rate"``, its default; ``cleanlab.rank.get_label_quality_scores``),
with our strictness on top so that a weak model cannot flood a clean dataset with flags.

The model it reads (``model``): "auto" = on the CPU a model of its own ("augmented"): the
shared recipe with random crop + flip for about ``augmented_passes`` (180,000) row-passes
(30 epochs at 6,000 rows, at least 10 and at most 30); on CUDA the shared detection model,
which is already trained so (30 epochs, crop + flip). The shared CPU model (10 epochs, no
crop: what the backdoor evidence is calibrated on) is too weak a judge of labels. Measured
2026-12-06 (6,000-row CIFAR-10 slices, 10% noise, seed 0, small CNN, one thread), best
threshold on 1 - p(label) chosen with the truth, TPR at 2% FPR (AUROC): shared model 0.54
(0.934) / 0.08 (0.782) / 0.10 (0.774) for symmetric / pair-flip / instance-dependent noise;
augmented 0.60 (0.952) / 0.11 (0.820) / 0.17 (0.826), for 134 s of training against the
shared model's 64 s (docs/benchmarks.md, "What a stronger label model buys").

Probabilities (``folds``): "auto" takes the reading model's own (in-sample, eval-mode)
probabilities on the CPU, where that model has not memorised the wrong labels, and
k = 5 fold out-of-sample probabilities on CUDA, where the model trains long enough to
memorise. Measured on a 6,000-row CIFAR-10 slice with 10% noise (the shared small CNN, probe):
the in-sample self-confidence ranked the wrong labels at AUROC 0.936 / 0.775 / 0.773
(symmetric / pair-flip / instance-dependent) against 0.918 / 0.710 / 0.731 for 5-fold
out-of-sample probabilities, which cost 120 s more (docs/benchmarks.md, "Detectors").

A row is flagged when cleanlab finds it AND the evidence is strong on every view the audit
has of it (ours; the strictness):

- its given label's probability is below ``max_confidence`` (0.05), or below
  ``loose_confidence`` (0.10) when the strict bars alone flag at least ``loose_after`` (1.5%)
  of the rows: then the data carries wrong labels and a small p(label) is likelier one of
  them than a hard image (a clean set stays at the strict bar: 6,000-row clean slices 0.1-0.4%
  strict flags, the attack cells 0.2-0.6%, 10% pair-flip / instance noise 0.4-0.9%, 10%
  symmetric noise 3.4-3.6%; the full 50,000-row CIFAR-10 as shipped 0.85%, where the label
  model trains 10 epochs and fits less, hence 1.5% and not 1%);
- its area under the margin (AUM, Pleiss et al. 2020: the mean training margin over epochs,
  from the reading model's training) is below ``max_aum`` (0: on average the model never
  fitted the label);
- at most ``max_agreement`` (0.5) of its 20 nearest neighbours in the model's feature space
  carry its label (SimiFeat-style voting, Zhu et al. 2022).

Why: cleanlab's count of label issues comes from the confident joint, which a weak model
inflates with its own confusions (the full 50,000-row CIFAR-10 as shipped: 9% flagged at an
out-of-sample accuracy of 0.78, where published estimates of its real errors are under 1%).
With the bars and the augmented model, the default audit flagged 0.1-0.4% of clean
6,000-row slices (3 seeds) and 0.85% of the full 50,000-row set; the cost is recall: on the
same slices with 10% noise, 44-49% of symmetric, 2% of pair-flip and 4-5% of
instance-dependent wrong labels at 1.6% / 0.2-0.4% / 0.3-0.4% clean-row FPR (a weak model
cannot tell a cat labelled dog from a hard cat; with the shared model: 35%, 3%, 4%).

Score (higher = dirtier): the mean rank over rows of (1 - p(label)), -AUM and
(1 - agreement): one ordering from the three views. Suggested label: the most probable
other class, for flagged rows. ``min_accuracy`` (0.5): below it (accuracy of the
probabilities against the given labels) nothing is flagged, and it says so.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError

from .base import DETECTORS, AuditContext, Detector, DetectorResult
from trainers.accel import is_cuda

from .detection_model import ModelSpec, out_of_sample_probs, resolve_device
from .dynamics import SIGNALS, shared_signals

FILTERS = ("confident_learning", "prune_by_noise_rate", "predicted_neq_given", "both")
MODELS = ("auto", "shared", "augmented")


@dataclass
class ConfidentConfig:
    folds: int | str = "auto"  # 0 = the reading model's probabilities; k >= 2 = k-fold out-of-sample
    filter_by: str = "prune_by_noise_rate"
    arch: str = "auto"
    # the model whose probabilities, training margins and features are read: "shared" (the
    # audit's detection model) or "augmented" (a model of its own, trained with random crop +
    # flip); "auto" = augmented on the CPU, where the shared model is trained without crop
    # for a few epochs, shared on CUDA, where it is already trained so (see the module doc)
    model: str = "auto"
    # epochs of the model read: the shared model's (None = its preset's) or, augmented, its
    # own (None = about ``augmented_passes`` row-passes: 30 epochs at 6,000 rows, at least 10)
    epochs: int | None = None
    augmented_passes: int = 180_000
    fold_epochs: int | None = None  # the fold models (folds >= 2): None = half the preset's epochs, at least 4
    max_confidence: float = 0.05
    # the looser p(label) bar, used when the strict bars alone flag at least ``loose_after``
    # of the rows (the data carries wrong labels, so a hard image is no longer the likelier
    # explanation of a small p(label)); 0 = never
    loose_confidence: float = 0.10
    loose_after: float = 0.015
    max_aum: float = 0.0
    max_agreement: float = 0.5
    k: int = 20
    min_accuracy: float = 0.5
    # the space of the neighbour-agreement bar: "model" (the detection model's features) or
    # "clip" (the image embeddings of a clip / clip_knn detector that ran earlier in the audit)
    features: str = "model"


def find_label_issues(probs: np.ndarray, labels: np.ndarray, filter_by: str = "prune_by_noise_rate") -> tuple[np.ndarray, np.ndarray]:
    """(is_label_issue, suggested label) per row: cleanlab's ``find_label_issues`` and the most
    probable other class."""
    from cleanlab.filter import find_label_issues as cl_find

    if filter_by not in FILTERS:
        raise ValueError(f"filter_by must be one of {FILTERS}, got {filter_by!r}")
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    present = np.unique(labels)
    issues = np.zeros(len(labels), dtype=bool)
    if len(present) >= 2:
        # cleanlab wants every class of the probability matrix to occur among the labels
        sub = probs[:, present] / np.maximum(probs[:, present].sum(1, keepdims=True), 1e-12)
        remap = np.searchsorted(present, labels)
        # n_jobs=1: cleanlab otherwise forks a multiprocessing pool, and a fork of a process with
        # Prefect's threads running can deadlock (seen: the demo test hung in Pool.terminate)
        issues = np.asarray(cl_find(remap, sub, filter_by=filter_by, n_jobs=1), dtype=bool)
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -np.inf
    return issues, other.argmax(1)


def mean_rank(*columns: np.ndarray) -> np.ndarray:
    """The mean over columns of each row's rank in (0, 1] (higher = higher value)."""
    ranks = [pd.Series(c).rank(method="average").to_numpy() / max(len(c), 1) for c in columns]
    return np.mean(ranks, axis=0)


def _clip_agreement(data: ImageDataset, ctx: AuditContext, k: int) -> np.ndarray:
    """Each row's share of its k nearest neighbours (cosine, CLIP image embeddings of an
    earlier clip / clip_knn detector in this audit) that carry its label."""
    found = [v[0] for key, v in ctx.model_cache.items()
             if isinstance(key, tuple) and key[:1] == ("clip_embeddings",) and key[-1] == data.fingerprint]
    if not found:
        raise VetsetError("confident features=clip needs the clip or clip_knn detector earlier in --detectors "
                          "(it embeds the images)")
    from .clip.scoring import neighbour_votes

    return neighbour_votes(found[0], data.labels, data.num_classes, k)[1]


@DETECTORS.register("confident")
class ConfidentLearning(Detector):
    name = "confident"
    kind = "label_noise"
    Config = ConfidentConfig

    def _folds(self, ctx: AuditContext) -> int:
        folds = self.config.folds
        if folds == "auto":
            return 5 if is_cuda(resolve_device(ctx.device)) else 0
        folds = int(folds)
        if folds == 1 or folds < 0:
            raise ValueError("confident: folds must be 0 (the reading model's probabilities) or >= 2")
        return folds

    def reading_spec(self, n: int, ctx: AuditContext) -> tuple[ModelSpec, str]:
        """The spec of the model it reads, and which ("shared" or "augmented")."""
        cfg: ConfidentConfig = self.config
        if cfg.model not in MODELS:
            raise VetsetError(f"confident model={cfg.model!r}: use one of {', '.join(MODELS)}")
        which = cfg.model
        if which == "auto":
            which = "shared" if is_cuda(resolve_device(ctx.device)) else "augmented"
        if which == "shared":
            return ModelSpec.from_options(cfg.arch, cfg.epochs), which
        epochs = cfg.epochs if cfg.epochs is not None else int(np.clip(round(cfg.augmented_passes / max(n, 1)), 10, 30))
        return ModelSpec(arch=cfg.arch, epochs=int(epochs), crop=True), which

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg: ConfidentConfig = self.config
        n = len(data)
        if n == 0:
            return DetectorResult(self.name, np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64))
        spec, which = self.reading_spec(n, ctx)
        dm, signals = shared_signals(data, ctx, spec, cfg.k)
        conf_in, aum, agree = (signals[:, SIGNALS.index(s)] for s in ("conf", "aum", "knn"))
        folds = self._folds(ctx)
        last = dm.history[-1] if dm.history else {}
        info: dict = {"folds": folds, "filter_by": cfg.filter_by, "features": cfg.features,
                      "model": {"which": which, "arch": dm.spec.arch, "epochs": len(dm.history), "crop": dm.spec.crop,
                                "train_seconds": round(dm.train_seconds, 3), "trained_now": dm.trained_now,
                                **({"train_acc": round(float(last["acc"]), 4)} if "acc" in last else {})}}
        if cfg.features == "clip":
            agree = _clip_agreement(data, ctx, cfg.k)
        elif cfg.features != "model":
            raise VetsetError(f"confident features={cfg.features!r}: use model or clip")
        if folds:
            dev = resolve_device(ctx.device)
            epochs = cfg.fold_epochs
            if epochs is None:
                epochs = max(4, spec.resolve(dev).train_config(dev, ctx.seed).epochs // 2)
            oof = out_of_sample_probs(data, ctx, replace(spec, epochs=int(epochs)), folds)
            probs = oof.probs
            info.update(probabilities=f"{folds}-fold out-of-sample", oof_seconds=round(oof.seconds, 3),
                        trained_now=oof.trained_now)
        else:
            from .detection_model import model_logits

            logits = model_logits(data, dm, ctx).astype(np.float64)
            z = np.exp(logits - logits.max(1, keepdims=True))
            probs = z / z.sum(1, keepdims=True)
            info.update(probabilities=f"the {which} detection model's (in-sample, not trained to memorise)")
        found, suggested_all = find_label_issues(probs, data.labels, cfg.filter_by)
        p_label = probs[np.arange(n), data.labels]
        others = (aum < cfg.max_aum) & (agree <= cfg.max_agreement)
        strict = (p_label < cfg.max_confidence) & others
        issues = found & strict
        readable = max(int((~data.unreadable).sum()), 1)
        loose = bool(cfg.loose_after > 0 and cfg.loose_confidence > cfg.max_confidence
                     and issues.sum() >= cfg.loose_after * readable)
        bar = cfg.loose_confidence if loose else cfg.max_confidence
        if loose:
            issues = found & (p_label < bar) & others
        accuracy = float((probs.argmax(1) == data.labels).mean())
        withheld = accuracy < cfg.min_accuracy
        if withheld:
            issues = np.zeros(n, dtype=bool)
        score = mean_rank(1.0 - p_label, -aum, 1.0 - agree)
        suggested = np.where(issues, suggested_all, -1)
        info.update({
            "accuracy": round(accuracy, 4), "withheld": bool(withheld), "cleanlab_issues": int(found.sum()),
            "strict_issues": int((found & strict).sum()), "min_accuracy": cfg.min_accuracy, "loose": loose,
            "bars": {"max_confidence": bar, "max_aum": cfg.max_aum, "max_agreement": cfg.max_agreement},
            "finding": (f"{int((found & strict).sum())} label issues withheld: the probabilities' accuracy {accuracy:.3f} "
                        f"< {cfg.min_accuracy} (too weak to tell a wrong label from a hard image)" if withheld else
                        f"{int(issues.sum())} label issues: cleanlab found {int(found.sum())}, of which "
                        f"{int(issues.sum())} pass every bar (p(label) < {bar}, AUM < {cfg.max_aum}, "
                        f"neighbour agreement <= {cfg.max_agreement}; accuracy {accuracy:.3f})"
                        + (f"; the p(label) bar was loosened from {cfg.max_confidence} because the strict bars "
                           f"alone flagged {int((found & strict).sum())} rows (>= {cfg.loose_after:.1%})" if loose else "")),
        })
        return DetectorResult(self.name, score, issues, suggested, info)
