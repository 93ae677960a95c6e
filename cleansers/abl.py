"""ABL isolation as a detector (Li et al., "Anti-Backdoor Learning", NeurIPS 2021).

Backdoored rows are learned much faster than clean ones. Training with local gradient
ascent on the batch-mean loss l, ``sign(l - gamma) * l`` (or the flooding form
``|l - gamma| + gamma``, same gradient), keeps the clean rows' loss near ``gamma`` while the
poisoned rows, being easy, fall far below it. After training, each row's cross-entropy is
computed in eval mode without augmentation (in large batches; BackdoorBench loops with
batch size 1, which gives the same numbers more slowly). Low loss = suspect.

Score: ``-loss`` (higher = dirtier, as every detector). Flag (``cut``):

- "mixture" (the default, ours): per class, a two-component Gaussian mixture on the log
  loss; the low-loss component is isolated when it lies at least ``min_separation`` (2)
  pooled standard deviations below the other and holds at most ``max_share`` (0.8) of the
  class; its rows (posterior >= 0.5) are flagged. A class without such a cluster flags
  nothing, so clean data comes back (nearly) clean, unlike a fixed share;
- "ratio": the published rule, the ``isolation_ratio`` lowest-loss rows of the whole set
  (default the audit's ``expected_dirty_rate``; ABL itself isolates 1%).

With the mixture cut ABL is a specialist that gives class evidence: a class whose isolated
share has a robust z of at least 3 over the classes and is at least 5% of it is weak
evidence for the verdict (cleansers/verdict.py), and ABL's flags count in the classes the
verdict names (or alone, when ABL is the only detector of the audit).

Published as a detector at 10% BadNets: TPR 89.74 / FPR 1.14 (specs/detectors.md); weak
against dynamic triggers (WaNet, Input-Aware).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from pipelines.dataset import ImageDataset
from trainers.defenses.abl import isolate, isolation_config, train_isolation_model
from trainers.loop import TrainConfig
from trainers.models import build_model
from trainers.train import channel_stats

from .base import DETECTORS, AuditContext, Detector, DetectorResult
from .detection_model import checkpoint_for


@DETECTORS.register("abl")
class ABLDetector(Detector):
    name = "abl"
    kind = "specialist"

    @dataclass
    class Config:
        """Defaults and where they come from:

        model: "small_cnn" so that it runs on a CPU; "preact_resnet18" is the published
            architecture (both BackdoorBench and the authors), use it on a GPU.
        epochs: 20, BackdoorBench (the authors: 10).
        lr: 0.01, BackdoorBench (the authors: 0.1), constant during isolation.
        gamma: 0.5, both. loss_form: "sign" (authors' code) or "flood".
        batch_size: 128, BackdoorBench (the authors: 64).
        momentum 0.9, weight_decay 5e-4: BackdoorBench's SGD (the authors: wd 1e-4).
        augment: False, as in the authors' isolation loader (ToTensor only); BackdoorBench
            isolates with RandomCrop(pad 4) + flip (``True``). Without augmentation the
            trigger is learned first; with it, on a 6,000-row CIFAR-10 slice with a 3x3 patch,
            the isolation loss ranked the poisoned rows worse than chance (AUROC 0.38 vs 0.92
            without; docs/benchmarks.md, "Defenses").
        cut: "mixture" (per-class low-loss cluster, ours) or "ratio" (a fixed share, published).
        isolation_ratio: the "ratio" cut's share; None = ctx.expected_dirty_rate (ABL's own is 0.01).
        min_separation, max_share: the "mixture" cut (see the module docstring).
        device: None = the audit's ``ctx.device``.
        """

        model: str = "small_cnn"
        epochs: int = 20
        lr: float = 0.01
        gamma: float = 0.5
        loss_form: str = "sign"
        batch_size: int = 128
        momentum: float = 0.9
        weight_decay: float = 5e-4
        augment: bool = False
        cut: str = "mixture"
        isolation_ratio: float | None = None
        min_separation: float = 2.0
        max_share: float = 0.8
        eval_batch_size: int = 1024
        device: str | None = None

    # options that do not change the trained model (so they are not part of the cache key)
    _NOT_IN_KEY = ("cut", "isolation_ratio", "min_separation", "max_share", "eval_batch_size", "device")

    def train_config(self, seed: int, device: str) -> TrainConfig:
        """The isolation recipe shared with ABL the defense (:func:`isolation_config`)."""
        c = self.config
        return isolation_config(epochs=c.epochs, lr=c.lr, batch_size=c.batch_size, momentum=c.momentum,
                                weight_decay=c.weight_decay, augment=c.augment, device=device, seed=seed,
                                eval_batch_size=c.eval_batch_size)

    def cache_key(self, data: ImageDataset, seed: int) -> tuple:
        cfg = {k: v for k, v in asdict(self.config).items() if k not in self._NOT_IN_KEY}
        return ("abl", data.fingerprint, tuple(sorted(cfg.items())), seed)

    def trained_model(self, data: ImageDataset, ctx: AuditContext):
        """The isolation model for ``data``, trained once per (fingerprint, config, seed) and
        kept in ``ctx.model_cache``. Returns (model, info)."""
        key = self.cache_key(data, ctx.seed)
        if key in ctx.model_cache:
            return ctx.model_cache[key], {"cached": True}
        c = self.config
        device = c.device or ctx.device
        mean, std = channel_stats(data.images)
        model = build_model(c.model, data.num_classes, data.image_size, mean, std, seed=ctx.seed)
        result = train_isolation_model(model, data.images, data.labels, self.train_config(ctx.seed, device),
                                       gamma=c.gamma, loss_form=c.loss_form,
                                       checkpoint=checkpoint_for(ctx.checkpoint_dir, *key))
        ctx.model_cache[key] = result.model
        last = result.history[-1] if result.history else {}
        return result.model, {"cached": False, "train_seconds": result.seconds,
                              "final_train_loss": last.get("loss"), "final_train_acc": last.get("acc")}

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        c = self.config
        n = len(data)
        if n == 0:
            return DetectorResult(self.name, np.zeros(0), np.zeros(0, bool))
        if c.cut not in ("mixture", "ratio"):
            raise ValueError(f"abl: cut must be 'mixture' or 'ratio', got {c.cut!r}")
        model, info = self.trained_model(data, ctx)
        t0 = time.perf_counter()
        ratio = ctx.expected_dirty_rate if c.isolation_ratio is None else c.isolation_ratio
        isolated, losses = isolate(model, data.images, data.labels, ratio, c.eval_batch_size)
        flag = np.zeros(n, dtype=bool)
        if c.cut == "ratio":
            flag[isolated] = True
            info["isolation_ratio"] = ratio
        else:
            flag, per_class = low_loss_clusters(losses, data.labels, data.num_classes, c.min_separation, c.max_share,
                                                ctx.seed)
            info["classes"] = per_class
            info["class_evidence"] = isolation_evidence(flag, data.labels, data.num_classes)
        info.update({
            "cut": c.cut,
            "n_flagged": int(flag.sum()),
            "loss_threshold": float(losses[flag].max()) if flag.any() else None,
            "median_loss": float(np.median(losses)),
            "score_seconds": time.perf_counter() - t0,
            "finding": f"{int(flag.sum())} rows isolated by their low loss ({c.cut} cut)",
        })
        return DetectorResult(self.name, -losses, flag, info=info)


def low_loss_clusters(losses: np.ndarray, labels: np.ndarray, num_classes: int, min_separation: float,
                      max_share: float, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Per class, the rows of a low-loss cluster (see the module docstring) and what was
    found per class."""
    from sklearn.mixture import GaussianMixture

    flag = np.zeros(len(losses), dtype=bool)
    out = {}
    x_all = np.log(np.maximum(losses, 1e-8))
    for k in range(num_classes):
        rows = np.flatnonzero(labels == k)
        if len(rows) < 20:
            continue
        x = x_all[rows][:, None]
        g = GaussianMixture(2, reg_covar=1e-4, random_state=seed).fit(x)
        mu = g.means_[:, 0]
        sd = np.sqrt(g.covariances_.reshape(2))
        low = int(np.argmin(mu))
        sep = float((mu[1 - low] - mu[low]) / np.sqrt((sd[0] ** 2 + sd[1] ** 2) / 2))
        post = g.predict_proba(x)[:, low]
        hit = post >= 0.5
        share = float(hit.mean())
        isolated = sep >= min_separation and share <= max_share
        if isolated:
            flag[rows[hit]] = True
        out[str(k)] = {"separation": round(sep, 3), "low_share": round(share, 4), "isolated": bool(isolated)}
    return flag, out


def isolation_evidence(flag: np.ndarray, labels: np.ndarray, num_classes: int,
                       min_share: float = 0.05, min_z: float = 3.0) -> list[dict]:
    """Weak class evidence: a class whose isolated share stands out (robust z >= 3, >= 5%)."""
    share = np.array([flag[labels == k].mean() if (labels == k).any() else 0.0 for k in range(num_classes)])
    med = np.median(share)
    mad = 1.4826 * np.median(np.abs(share - med))
    z = (share - med) / max(mad, 1e-3)
    return [{"class": int(k), "signal": "abl_isolated_share", "value": round(float(share[k]), 4),
             "threshold": min_share, "strength": "weak" if share[k] >= min_share and z[k] >= min_z else "none",
             "detail": f"robust z {z[k]:.1f}"} for k in range(num_classes)]
