"""FT-SAM (Zhu et al., ICCV 2023): fine-tune with adaptive sharpness-aware minimisation,
built on the loop's ``after_backward`` hook (the second gradient pass)."""
from __future__ import annotations

from dataclasses import dataclass

from ..loop import TrainHooks, fit
from .base import register
from .common import asam_hook, clean_arrays, fine_tune_config


@dataclass
class FTSAMConfig:
    """specs/defenses.md: eps = rho w^2 g / || |w| g ||, rho 2.0, label smoothing 0.1,
    SGD lr 0.01, cosine, 100 epochs, batch 256, standard augmentation. ``eta`` is an
    offset for |w| (0 as in that formula and BackdoorBench's FT-SAM; Kwon et al.'s ASAM
    uses 0.01)."""

    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 256
    rho: float = 2.0
    eta: float = 0.0
    label_smoothing: float = 0.1
    weight_decay: float = 5e-4


@register("ftsam", FTSAMConfig, "fine-tuning with adaptive sharpness-aware minimisation")
def purify_ftsam(model, clean, cfg: FTSAMConfig, *, device, seed, log):
    images, labels = clean_arrays(clean)
    tc = fine_tune_config(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, device=device, seed=seed,
                          weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing, n_rows=len(images))
    result = fit(model, images, labels, tc, TrainHooks(after_backward=asam_hook(cfg.rho, cfg.eta)))
    return result.model, {"final_train_acc": result.history[-1]["acc"] if result.history else None}
