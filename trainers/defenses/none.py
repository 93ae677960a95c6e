"""No defense: plain training on every readable row (the undefended baseline)."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.dataset import ImageDataset

from ..loop import TrainConfig, fit
from .base import DEFENSES, Defense, epoch_logger, new_model, readable, staged


def plain_train(ds: ImageDataset, cfg: TrainConfig, *, model_name: str, seed: int, log=None,
                pretrained: str | None = None, stage: str = "train"):
    """Train a fresh model on ``ds`` with ``cfg``; returns (model, info)."""
    ds = readable(ds)
    model = new_model(ds, model_name, seed, pretrained)
    result = fit(model, ds.images, ds.labels, cfg, log=epoch_logger(log, stage, cfg.epochs))
    return result.model, {"history": staged(stage, result), "train_seconds": result.seconds,
                          "n_train": int(len(ds))}


@DEFENSES.register("none")
class NoDefense(Defense):
    name = "none"

    @dataclass
    class Config:
        """No options: the training recipe is the given TrainConfig."""

    def train(self, ds, cfg, *, model_name, device="auto", seed=0, log=None, pretrained=None):
        cfg = cfg.replace(device=device, seed=seed)
        return plain_train(ds, cfg, model_name=model_name, seed=seed, log=log, pretrained=pretrained)
