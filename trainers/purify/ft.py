"""FT: plain fine-tuning on the clean set, the baseline every method must beat."""
from __future__ import annotations

from dataclasses import dataclass

from ..loop import fit
from .base import register
from .common import budget_epochs, check_steps, clean_arrays, fine_tune_config, schedule_info


@dataclass
class FTConfig:
    """BackdoorBench's fine-tuning recipe (SGD lr 0.01, momentum 0.9, wd 5e-4, cosine,
    batch 128, RandomCrop + flip; specs/defenses.md) for ``epochs`` (20 here: chosen, not
    published). ``steps``: an optimizer-step budget that replaces ``epochs`` (rounded up to
    whole epochs; 20 epochs of batch 128 on 2,500 rows are 400 steps)."""

    epochs: int = 20
    steps: int | None = None
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 5e-4
    augment: bool = True

    def __post_init__(self) -> None:
        check_steps("steps", self.steps)


@register("ft", FTConfig, "fine-tune on the clean set")
def purify_ft(model, clean, cfg: FTConfig, *, device, seed, log):
    images, labels = clean_arrays(clean)
    epochs = budget_epochs(cfg.epochs, cfg.steps, len(images), cfg.batch_size)
    tc = fine_tune_config(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, device=device, seed=seed,
                          weight_decay=cfg.weight_decay, augment=cfg.augment, n_rows=len(images))
    result = fit(model, images, labels, tc)
    return result.model, {"final_train_acc": result.history[-1]["acc"] if result.history else None,
                          **schedule_info("", result.history, len(images), cfg.batch_size)}
