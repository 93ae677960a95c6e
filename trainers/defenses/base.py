"""The defense interface and registry, plus what every defense shares (building a fresh
model for a dataset, logging epochs, combining stage histories)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

import numpy as np
from torch import nn

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError
from pipelines.registry import Registry

from ..loop import TrainConfig, TrainResult
from ..models import ImageClassifier, build_model

DEFENSES: Registry[type["Defense"]] = Registry("defense")

Log = Callable[[str], Any]


class Defense:
    """A way of training on untrusted data.

    ``Config`` holds the defense's own options; the training recipe of its main stage (epochs,
    lr, schedule, augmentation, device, seed) is the :class:`TrainConfig` passed to
    :meth:`train`. ``info`` returned by :meth:`train` always has ``history`` (one dict per
    epoch, with a ``stage`` key), ``train_seconds``, ``n_train`` (rows the model was trained
    on) and, when the saved model must be wrapped at inference, ``wrapper`` (a
    :data:`trainers.saved.WRAPPERS` spec).
    """

    name = "base"

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any = None, **options: Any):
        if config is None:
            known = {f.name for f in fields(self.Config)}
            unknown = sorted(set(options) - known)
            if unknown:
                raise VetsetError(f"defense {self.name!r} has no option(s) {', '.join(unknown)}; "
                                  f"known: {', '.join(sorted(known)) or 'none'}")
            config = self.Config(**options)
        elif options:
            config = replace(config, **options)
        self.config = config

    def config_dict(self) -> dict:
        """The options as JSON-able values (tables and other objects by type name)."""
        out = {}
        for k, v in asdict(self.config).items():
            out[k] = v if isinstance(v, (str, int, float, bool, type(None), list, tuple, dict)) else type(v).__name__
        return out

    def train(self, ds: ImageDataset, cfg: TrainConfig, *, model_name: str, device: str = "auto",
              seed: int = 0, log: Log | None = None, pretrained: str | None = None) -> tuple[nn.Module, dict]:
        raise NotImplementedError


def build_defense(name: str, options: dict | None = None) -> Defense:
    return DEFENSES.get(name)(**(options or {}))


def defense_names() -> list[str]:
    return DEFENSES.names()


def reads_scores(name: str) -> bool:
    """Whether defense ``name`` takes an audit's scores table (a ``scores`` field in its
    Config): curate drops its flagged rows, ABL unlearns them, PDB never draws them as
    defensive rows."""
    return "scores" in {f.name for f in fields(DEFENSES.get(name).Config)}


# --------------------------------------------------------------------------- shared helpers


def readable(ds: ImageDataset) -> ImageDataset:
    """The rows that could be decoded (unreadable rows never take part in training)."""
    if not ds.unreadable.any():
        return ds
    return ds.subset(np.flatnonzero(~ds.unreadable))


def new_model(ds: ImageDataset, model_name: str, seed: int, pretrained: str | None = None) -> ImageClassifier:
    """A freshly initialised ``model_name`` for ``ds`` with the data's channel statistics."""
    from ..train import channel_stats  # trainers.train imports this package lazily

    if len(ds) == 0:
        raise VetsetError("no readable rows to train on")
    mean, std = channel_stats(ds.images)
    return build_model(model_name, ds.num_classes, ds.image_size, mean, std, pretrained=pretrained, seed=seed)


def epoch_logger(log: Log | None, stage: str, epochs: int) -> Callable[[dict], None] | None:
    if log is None:
        return None

    def emit(rec: dict) -> None:
        log(f"[{stage}] epoch {rec['epoch'] + 1}/{epochs} loss {rec['loss']:.4f} acc {rec['acc']:.4f} "
            f"lr {rec['lr']:.4g} {rec['seconds']:.2f}s")

    return emit


def staged(stage: str, result: TrainResult) -> list[dict]:
    return [{"stage": stage, **rec} for rec in result.history]
