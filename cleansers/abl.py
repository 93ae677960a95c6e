"""ABL isolation as a detector (Li et al., "Anti-Backdoor Learning", NeurIPS 2021).

Backdoored rows are learned much faster than clean ones. Training with local gradient
ascent on the batch-mean loss l, ``sign(l - gamma) * l`` (or the flooding form
``|l - gamma| + gamma``, same gradient), keeps the clean rows' loss near ``gamma`` while the
poisoned rows, being easy, fall far below it. After training, each row's cross-entropy is
computed in eval mode without augmentation (in large batches; BackdoorBench loops with
batch size 1, which gives the same numbers more slowly). Low loss = suspect.

Score: ``-loss`` (higher = dirtier, as every detector). Flag: the ``isolation_ratio``
lowest-loss rows; by default the audit's expected dirty rate (``ctx.expected_dirty_rate``,
0.1 unless the user says otherwise), because as a detector we want to catch the dirty rows,
not only isolate the 1% that ABL itself unlearns (set ``isolation_ratio=0.01`` for that).

In the fusion ABL is a *quota* detector (it flags a fixed share of the rows, dirty or not,
so on clean data every flag is a false positive): next to other detectors its flag counts
only where another detector agrees, and an audit that ran ABL alone keeps ABL's own flags
(cleansers/fusion.py). A data-driven threshold (a gap in the loss distribution) was not
adopted: the fixed ratio is the published behaviour and tests/test_trainers.py pins it.

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


@DETECTORS.register("abl")
class ABLDetector(Detector):
    name = "abl"

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
        isolation_ratio: None = ctx.expected_dirty_rate (ABL's own is 0.01).
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
        isolation_ratio: float | None = None
        eval_batch_size: int = 1024
        device: str | None = None

    # options that do not change the trained model (so they are not part of the cache key)
    _NOT_IN_KEY = ("isolation_ratio", "eval_batch_size", "device")

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
                                       gamma=c.gamma, loss_form=c.loss_form)
        ctx.model_cache[key] = result.model
        last = result.history[-1] if result.history else {}
        return result.model, {"cached": False, "train_seconds": result.seconds,
                              "final_train_loss": last.get("loss"), "final_train_acc": last.get("acc")}

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        c = self.config
        n = len(data)
        if n == 0:
            return DetectorResult(self.name, np.zeros(0), np.zeros(0, bool))
        model, info = self.trained_model(data, ctx)
        t0 = time.perf_counter()
        ratio = ctx.expected_dirty_rate if c.isolation_ratio is None else c.isolation_ratio
        isolated, losses = isolate(model, data.images, data.labels, ratio, c.eval_batch_size)
        flag = np.zeros(n, dtype=bool)
        flag[isolated] = True
        info.update({
            "isolation_ratio": ratio,
            "n_flagged": len(isolated),
            "loss_threshold": float(losses[isolated].max()) if len(isolated) else None,
            "median_loss": float(np.median(losses)),
            "score_seconds": time.perf_counter() - t0,
        })
        return DetectorResult(self.name, -losses, flag, info=info)
