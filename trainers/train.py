"""Train on a dataset and save the model + metrics: the core of ``python -m trainers train``,
callable from a Prefect flow as :func:`train_and_save`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError

from .evaluate import evaluate, load_trigger
from .loop import TrainConfig, fit, is_main_process, preset as get_preset, resolve_device
from .models import build_model
from .saved import save_model, write_json_atomic

METRICS_FILE = "metrics.json"


def channel_stats(images: np.ndarray, max_rows: int = 20000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NHWC images in [0, 1] (on at most ``max_rows``
    evenly spaced rows)."""
    if len(images) == 0:
        raise VetsetError("cannot train on an empty dataset")
    step = max(1, len(images) // max_rows)
    x = images[::step].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean, std = x.mean(0), x.std(0)
    std = np.where(std < 1e-6, 1.0, std)
    return [float(m) for m in mean], [float(s) for s in std]


def _as_dataset(data: str | os.PathLike | ImageDataset) -> ImageDataset:
    if isinstance(data, ImageDataset):
        return data
    from pipelines.loaders import load_dataset

    return load_dataset(data)


def auto_choice(device: str) -> tuple[str, str]:
    """(model, preset) when the user says "auto": PreAct-ResNet18 with the fast recipe on a
    GPU, the small CNN with the CPU recipe elsewhere."""
    on_cuda = resolve_device(device).type == "cuda"
    return ("preact_resnet18", "fast") if on_cuda else ("small_cnn", "cpu_small")


def train_and_save(data: str | os.PathLike | ImageDataset, out: str | os.PathLike, *,
                   test: str | os.PathLike | ImageDataset | None = None, model: str = "auto",
                   preset: str = "auto", config: TrainConfig | None = None,
                   epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                   device: str = "auto", seed: int = 0, compile: bool | None = None,
                   trigger: str | os.PathLike | dict | None = None, pretrained: str | None = None,
                   tta_flip: bool = False, log: Callable[[str], Any] | None = print) -> dict:
    """Train ``model`` on ``data``, save it to ``out`` (model.safetensors, config.json) and
    write ``out/metrics.json``; returns the metrics.

    ``config`` overrides ``preset``; ``epochs``/``batch_size``/``lr``/``compile`` override
    either. Unreadable rows are left out of training. With ``test`` the metrics hold CA and
    per-class accuracy, and with a ``trigger`` (trigger.json path or spec dict) ASR and RA.
    """
    train_ds = _as_dataset(data)
    test_ds = _as_dataset(test) if test is not None else None
    trigger_spec = load_trigger(trigger) if isinstance(trigger, (str, os.PathLike)) else trigger
    auto_model, auto_preset = auto_choice(device)
    arch = auto_model if model == "auto" else model
    cfg = config if config is not None else get_preset(auto_preset if preset == "auto" else preset)
    overrides = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, compile=compile).items()
                 if v is not None}
    cfg = cfg.replace(device=device, seed=seed, **overrides)

    keep = np.flatnonzero(~train_ds.unreadable)
    images, labels = train_ds.images[keep], train_ds.labels[keep]
    if len(images) == 0:
        raise VetsetError("no readable rows to train on")
    mean, std = channel_stats(images)
    net = build_model(arch, train_ds.num_classes, train_ds.image_size, mean, std,
                      pretrained=pretrained, seed=seed)

    def log_epoch(rec: dict) -> None:
        if log is not None and is_main_process():
            log(f"epoch {rec['epoch'] + 1}/{cfg.epochs} loss {rec['loss']:.4f} acc {rec['acc']:.4f} "
                f"lr {rec['lr']:.4g} {rec['seconds']:.2f}s")

    result = fit(net, images, labels, cfg, log=log_epoch)
    metrics: dict[str, Any] = {
        "model": arch,
        "n_train": int(len(images)),
        "n_unreadable_skipped": int(len(train_ds) - len(images)),
        "dataset_fingerprint": train_ds.fingerprint,
        "device": str(resolve_device(cfg.device)),
        "epochs": len(result.history),
        "train_seconds": result.seconds,
        "sec_per_epoch": result.sec_per_epoch,
        "final_train_loss": result.history[-1]["loss"] if result.history else None,
        "final_train_acc": result.history[-1]["acc"] if result.history else None,
        "train_config": cfg.to_dict(),
        "history": result.history,
    }
    if test_ds is not None:
        if test_ds.num_classes != train_ds.num_classes:
            raise VetsetError(f"test set has {test_ds.num_classes} classes, training set {train_ds.num_classes}")
        metrics.update(evaluate(net, test_ds, trigger_spec, batch_size=cfg.eval_batch_size, tta_flip=tta_flip))
    if is_main_process():
        save_model(net, out, arch=arch, num_classes=train_ds.num_classes, class_names=train_ds.class_names,
                   input_size=train_ds.image_size, mean=mean, std=std,
                   extra={"train_config": cfg.to_dict(), "dataset_fingerprint": train_ds.fingerprint,
                          "trigger": trigger_spec})
        write_json_atomic(metrics, Path(out) / METRICS_FILE)
    return metrics
