"""FT: plain fine-tuning on the clean set, the baseline every method must beat."""
from __future__ import annotations

from dataclasses import dataclass

from ..loop import fit
from .base import register
from .common import clean_arrays, fine_tune_config


@dataclass
class FTConfig:
    """BackdoorBench's fine-tuning recipe (SGD lr 0.01, momentum 0.9, wd 5e-4, cosine,
    batch 128, RandomCrop + flip; specs/defenses.md) for ``epochs`` (20 here: chosen, not
    published)."""

    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 5e-4
    augment: bool = True


@register("ft", FTConfig, "fine-tune on the clean set")
def purify_ft(model, clean, cfg: FTConfig, *, device, seed, log):
    images, labels = clean_arrays(clean)
    tc = fine_tune_config(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, device=device, seed=seed,
                          weight_decay=cfg.weight_decay, augment=cfg.augment, n_rows=len(images))
    result = fit(model, images, labels, tc)
    return result.model, {"final_train_acc": result.history[-1]["acc"] if result.history else None}
