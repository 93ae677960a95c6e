"""ABL, anti-backdoor learning (Li et al., "Anti-Backdoor Learning: Training Clean Models on
Poisoned Data", NeurIPS 2021), in three stages on :func:`trainers.loop.fit`:

1. Isolation: train with local gradient ascent (the flooding loss ``sign(l - gamma) * l`` on
   the batch mean) so that clean rows stay near ``gamma`` while the easy poisoned rows fall
   far below; then isolate the ``isolation_ratio`` rows with the lowest cross-entropy (eval
   mode, no augmentation).
2. Fine-tuning: keep training that model on the other rows with the given recipe
   (BackdoorBench's ``finetuning_ascent_model``).
3. Unlearning: gradient ascent (minimise -CE) on the isolated rows, without augmentation.

The isolation part (:func:`train_isolation_model`, :func:`isolate`) is also what the ABL
detector (cleansers/abl.py) computes; it lives here because trainers never import cleansers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from pipelines.errors import VetsetError

from ..augment import AugmentConfig
from ..loop import TrainConfig, TrainHooks, fit, flooding_loss, per_sample_loss, predict_logits
from .base import DEFENSES, Defense, epoch_logger, new_model, readable, staged
from .curate import flagged_mask


def isolation_config(*, epochs: int = 20, lr: float = 0.01, batch_size: int = 128, momentum: float = 0.9,
                     weight_decay: float = 5e-4, augment: bool = False, device: str = "auto", seed: int = 0,
                     eval_batch_size: int = 1024) -> TrainConfig:
    """BackdoorBench's isolation recipe: constant lr 0.01, batch 128, SGD momentum 0.9, wd 5e-4,
    20 epochs (the authors: 10 at lr 0.1, batch 64). No augmentation by default, as in the
    authors' isolation loader; ``augment=True`` is BackdoorBench's RandomCrop(pad 4, zero
    padding) + flip."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                       nesterov=False, schedule="constant", label_smoothing=0.0,
                       augment=AugmentConfig(crop=augment, flip=augment, pad_mode="zero"),
                       device=device, seed=seed, eval_batch_size=eval_batch_size)


def train_isolation_model(model: nn.Module, images: np.ndarray, labels: np.ndarray, cfg: TrainConfig, *,
                          gamma: float = 0.5, loss_form: str = "sign", log=None, checkpoint=None):
    """Train ``model`` with ABL's local gradient ascent (flooding loss); returns fit's result."""
    hooks = TrainHooks(loss_fn=flooding_loss(gamma, loss_form))
    return fit(model, images, labels, cfg, hooks=hooks, log=log, checkpoint=checkpoint)


def isolate(model: nn.Module, images: np.ndarray, labels: np.ndarray, ratio: float,
            batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the ``round(ratio * N)`` lowest-loss rows, every row's loss)."""
    if not 0.0 <= ratio <= 1.0:
        raise VetsetError(f"abl: isolation_ratio must be in [0, 1], got {ratio}")
    losses = per_sample_loss(model, images, labels, batch_size).astype(np.float64)
    k = int(round(ratio * len(losses)))
    order = np.argsort(losses, kind="stable")
    return np.sort(order[:k]), losses


@DEFENSES.register("abl")
class ABLDefense(Defense):
    name = "abl"

    @dataclass
    class Config:
        """Defaults and where they come from (specs/defenses.md):

        isolation_ratio: 0.01, both codes (500 rows of CIFAR-10).
        isolation_epochs 20, isolation_lr 0.01, isolation_batch_size 128: BackdoorBench (the
            authors: 10 epochs at lr 0.1, batch 64); gamma 0.5 and the "sign" form, both.
        isolation_augment: False, the authors' isolation loader (ToTensor only); True is
            BackdoorBench's crop + flip. With crop + flip on a 6,000-row CIFAR-10 slice
            (3x3 patch, small CNN) the lowest-loss 1% held 5% poisoned rows; without, 95%
            (docs/benchmarks.md, "Defenses").
        finetune_epochs: None = the given TrainConfig's epochs (BackdoorBench: 60 epochs, lr
            0.01 -> 0.001 at epoch 40; the authors: lr 0.1 -> 0.01, with Cutout). The recipe is
            the given TrainConfig (e.g. the "fast" preset on a GPU).
        unlearn_epochs 20, unlearn_lr 1e-4: BackdoorBench (the authors: 5 epochs at 5e-4); SGD
            momentum 0.9, wd 1e-4, batch 64 (the authors'), no augmentation.
        scores: an audit's scores table (path or DataFrame, as for ``curate``; ours): when
            given, the isolated rows are its flagged rows instead of the ``isolation_ratio``
            lowest-loss rows (the isolation training still runs: its model is the one
            fine-tuned). ABL's loss isolation needs the trigger to be learned early; on a
            small CPU slice with augmentation it is not (docs/benchmarks.md, "Defenses").
        unlearn_stop_acc: stop unlearning once the model agrees with the isolated rows' labels
            on at most this share of them (eval mode, no augmentation), so that gradient ascent
            does not run on into the clean features (None = run every epoch, as published).
        """

        isolation_ratio: float = 0.01
        isolation_epochs: int = 20
        isolation_lr: float = 0.01
        isolation_batch_size: int = 128
        isolation_augment: bool = False
        gamma: float = 0.5
        loss_form: str = "sign"
        finetune_epochs: int | None = None
        unlearn_epochs: int = 20
        unlearn_lr: float = 1e-4
        unlearn_batch_size: int = 64
        unlearn_momentum: float = 0.9
        unlearn_weight_decay: float = 1e-4
        unlearn_stop_acc: float | None = None
        scores: Any = None

    def train(self, ds, cfg, *, model_name, device="auto", seed=0, log=None, pretrained=None):
        c = self.config
        ds = readable(ds)
        t0 = time.perf_counter()
        cfg = cfg.replace(device=device, seed=seed)
        model = new_model(ds, model_name, seed, pretrained)

        # 1. isolation
        iso_cfg = isolation_config(epochs=c.isolation_epochs, lr=c.isolation_lr, batch_size=c.isolation_batch_size,
                                   augment=c.isolation_augment, device=device, seed=seed, eval_batch_size=cfg.eval_batch_size)
        iso = train_isolation_model(model, ds.images, ds.labels, iso_cfg, gamma=c.gamma, loss_form=c.loss_form,
                                    log=epoch_logger(log, "abl:isolation", iso_cfg.epochs))
        isolated, losses = isolate(model, ds.images, ds.labels, c.isolation_ratio, cfg.eval_batch_size)
        if c.scores is not None:
            isolated = np.flatnonzero(flagged_mask(ds, c.scores))
        rest = np.setdiff1d(np.arange(len(ds)), isolated)
        if log is not None:
            how = ("the scores table's flagged rows" if c.scores is not None else
                   f"loss <= {losses[isolated].max() if len(isolated) else float('nan'):.4f}")
            log(f"[abl] isolated {len(isolated)} of {len(ds)} rows ({how}; median loss {np.median(losses):.4f})")

        # 2. fine-tuning on the rest
        ft_cfg = cfg if c.finetune_epochs is None else cfg.replace(epochs=c.finetune_epochs)
        ft = fit(model, ds.images[rest], ds.labels[rest], ft_cfg,
                 log=epoch_logger(log, "abl:finetune", ft_cfg.epochs))

        # 3. unlearning on the isolated rows
        history = staged("isolation", iso) + staged("finetune", ft)
        if len(isolated) and c.unlearn_epochs > 0:
            un_cfg = TrainConfig(epochs=c.unlearn_epochs, batch_size=c.unlearn_batch_size, lr=c.unlearn_lr,
                                 momentum=c.unlearn_momentum, weight_decay=c.unlearn_weight_decay, nesterov=False,
                                 schedule="constant", label_smoothing=0.0,
                                 augment=AugmentConfig(crop=False, flip=False, cutout=0),
                                 device=device, seed=seed, eval_batch_size=cfg.eval_batch_size)
            iso_images, iso_labels = ds.images[isolated], ds.labels[isolated]
            agreement: list[float] = []

            def stop(epoch: int, m: nn.Module) -> bool:
                if c.unlearn_stop_acc is None:
                    return False
                pred = predict_logits(m, iso_images, cfg.eval_batch_size).argmax(1)
                agreement.append(float((pred == iso_labels).mean()))
                return agreement[-1] <= c.unlearn_stop_acc

            un = fit(model, iso_images, iso_labels, un_cfg, hooks=TrainHooks(ascent=True, on_epoch_end=stop),
                     log=epoch_logger(log, "abl:unlearn", un_cfg.epochs))
            history += staged("unlearn", un)
            unlearn_epochs_run = len(un.history)
        else:
            agreement, unlearn_epochs_run = [], 0
        model.eval()
        return model, {
            "history": history,
            "train_seconds": time.perf_counter() - t0,
            "n_train": int(len(ds)),
            "n_isolated": int(len(isolated)),
            "isolated_by": "scores" if c.scores is not None else "loss",
            "isolated_ids": ds.sample_ids[isolated].tolist(),
            "isolation_loss_threshold": float(losses[isolated].max()) if len(isolated) else None,
            "median_isolation_loss": float(np.median(losses)),
            "unlearn_epochs_run": unlearn_epochs_run,
            "unlearn_agreement": agreement,
        }
