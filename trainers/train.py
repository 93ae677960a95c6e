"""Train on a dataset and save the model + metrics: the core of ``python -m trainers train``,
callable from a Prefect flow as :func:`train_and_save`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.atomic import atomic_write_json
from pipelines.dataset import ImageDataset, row_digests
from pipelines.errors import VetsetError
from pipelines.run_report import render_train_report

from .accel import is_cuda
from .evaluate import der, evaluate, load_trigger
from .loop import TrainConfig, is_main_process, preset as get_preset, resolve_device
from .saved import save_model

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
    on_cuda = is_cuda(resolve_device(device))
    return ("preact_resnet18", "fast") if on_cuda else ("small_cnn", "cpu_small")


def find_trigger(data: Any) -> Path | None:
    """The simulator's ``trigger.json`` beside a simulated dataset (``vetset poison`` writes
    data.parquet, truth.parquet and trigger.json into one folder), or None."""
    if isinstance(data, ImageDataset) or data is None:
        return None
    path = Path(data)
    folder = path if path.is_dir() else path.parent
    candidate = folder / "trigger.json"
    return candidate if candidate.is_file() else None


def read_baseline(baseline: str | os.PathLike | dict | None) -> dict | None:
    """An undefended run's metrics (its metrics.json path or the dict) for DER."""
    if baseline is None or isinstance(baseline, dict):
        return baseline
    import json

    path = Path(baseline)
    if not path.is_file():
        raise VetsetError(f"baseline metrics not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VetsetError(f"{path} is not valid JSON: {exc}") from None


def resolve_training(model: str = "auto", preset: str = "auto", config: TrainConfig | None = None, *,
                     epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                     compile: bool | None = None, device: str = "auto", seed: int = 0) -> tuple[str, TrainConfig]:
    """(architecture name, training config) from the user's choices ("auto" resolved)."""
    auto_model, auto_preset = auto_choice(device)
    arch = auto_model if model == "auto" else model
    cfg = config if config is not None else get_preset(auto_preset if preset == "auto" else preset)
    overrides = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, compile=compile).items()
                 if v is not None}
    return arch, cfg.replace(device=device, seed=seed, **overrides)


def train_defended(train_ds: ImageDataset, *, arch: str, cfg: TrainConfig, defense: str = "none",
                   defense_options: dict | None = None, seed: int = 0, pretrained: str | None = None,
                   log: Callable[[str], Any] | None = print,
                   monitor: Callable[[Any], dict] | None = None):
    """Train with ``defense`` (a name in ``trainers.defenses.DEFENSES``); returns (model, info).
    The model is the one to use at inference (wrapped when the defense needs a wrapper).
    ``monitor``: a per-epoch check (:func:`trainers.evaluate.epoch_monitor_for`) whose numbers
    join each epoch's history record, in every stage of the defense."""
    from .defenses import build_defense
    from .loop import epoch_monitor

    chosen = build_defense(defense, defense_options)
    quiet = log if is_main_process() else None
    with epoch_monitor(monitor):
        model, info = chosen.train(train_ds, cfg, model_name=arch, device=cfg.device, seed=seed, log=quiet,
                                   pretrained=pretrained)
    info["defense"] = defense
    info["defense_config"] = chosen.config_dict()
    return model, info


def run_metrics(model, info: dict, train_ds: ImageDataset, *, arch: str, cfg: TrainConfig,
                test_ds: ImageDataset | None = None, trigger_spec: dict | None = None, tta_flip: bool = False,
                baseline: dict | None = None) -> dict:
    """metrics.json's content: training facts, CA (and ASR / RA with a trigger, DER against a
    baseline run's metrics)."""
    history = info.get("history", [])
    extra = {k: v for k, v in info.items() if k not in ("history", "train_seconds", "n_train", "defense",
                                                          "defense_config", "wrapper")}
    metrics: dict[str, Any] = {
        "model": arch,
        "defense": info.get("defense", "none"),
        "defense_config": info.get("defense_config", {}),
        "n_train": int(info.get("n_train", len(train_ds))),
        "n_unreadable_skipped": int(train_ds.unreadable.sum()),
        "dataset_fingerprint": train_ds.fingerprint,
        "device": str(resolve_device(cfg.device)),
        "epochs": len(history),
        "train_seconds": info.get("train_seconds"),
        "sec_per_epoch": (info.get("train_seconds") or 0.0) / max(1, len(history)),
        "final_train_loss": history[-1]["loss"] if history else None,
        "final_train_acc": history[-1]["acc"] if history else None,
        "train_config": cfg.to_dict(),
        "wrapper": info.get("wrapper"),
        "defense_info": extra,
        "history": history,
    }
    if test_ds is not None:
        if test_ds.num_classes != train_ds.num_classes:
            raise VetsetError(f"test set has {test_ds.num_classes} classes, training set {train_ds.num_classes}")
        metrics.update(evaluate(model, test_ds, trigger_spec, batch_size=cfg.eval_batch_size, tta_flip=tta_flip))
    if baseline is not None:
        metrics["baseline"] = {k: baseline.get(k) for k in ("clean_acc", "asr", "ra", "defense")}
        if all(isinstance(metrics.get(k), float) and isinstance(baseline.get(k), (int, float))
               for k in ("clean_acc", "asr")):
            metrics["der"] = der(metrics["clean_acc"], metrics["asr"], float(baseline["clean_acc"]),
                                 float(baseline["asr"]))
    return metrics


def save_run(model, info: dict, metrics: dict, out: str | os.PathLike, *, arch: str, train_ds: ImageDataset,
             cfg: TrainConfig, trigger_spec: dict | None = None, truth=None) -> Path:
    """Save the model (with the defense's inference wrapper), metrics.json and report.html
    under ``out`` (``truth``: the simulation's truth table, for the report's isolated-rows
    share)."""
    from .saved import bare_model

    net = bare_model(model)
    mean = [float(v) for v in net.norm.mean.flatten().tolist()]
    std = [float(v) for v in net.norm.std.flatten().tolist()]
    if is_main_process():
        save_model(model if info.get("wrapper") else net, out, arch=arch, num_classes=train_ds.num_classes,
                   class_names=train_ds.class_names, input_size=train_ds.image_size, mean=mean, std=std,
                   wrapper=info.get("wrapper"),
                   extra={"train_config": cfg.to_dict(), "dataset_fingerprint": train_ds.fingerprint,
                          "trigger": trigger_spec, "defense": info.get("defense", "none"),
                          "defense_config": info.get("defense_config", {})},
                   training_rows=row_digests(train_ds.images[~train_ds.unreadable]))
        atomic_write_json(metrics, Path(out) / METRICS_FILE)
        render_train_report(metrics, out, train_ds, truth)
    return Path(out)


def train_and_save(data: str | os.PathLike | ImageDataset, out: str | os.PathLike, *,
                   test: str | os.PathLike | ImageDataset | None = None, model: str = "auto",
                   preset: str = "auto", config: TrainConfig | None = None,
                   epochs: int | None = None, batch_size: int | None = None, lr: float | None = None,
                   device: str = "auto", seed: int = 0, compile: bool | None = None,
                   trigger: str | os.PathLike | dict | None = None, pretrained: str | None = None,
                   tta_flip: bool = False, log: Callable[[str], Any] | None = print,
                   defense: str = "none", defense_options: dict | None = None,
                   baseline_metrics: str | os.PathLike | dict | None = None,
                   monitor_rows: int = 1000, processes: int = 1) -> dict:
    """Train ``model`` on ``data`` with ``defense`` (none, abl, pdb, curate; options in
    ``defense_options``, e.g. ``{"scores": "runs/x/scores.parquet"}`` for curate), save it to
    ``out`` (model.safetensors, config.json) and write ``out/metrics.json``; returns the metrics.

    ``config`` overrides ``preset``; ``epochs``/``batch_size``/``lr``/``compile`` override
    either. Unreadable rows are left out of training. With ``test`` the metrics hold CA and
    per-class accuracy, and with a ``trigger`` (trigger.json path or spec dict; by default the
    simulator's trigger.json beside ``data`` when there is one) ASR and RA; with
    ``baseline_metrics`` (an undefended run's metrics.json) DER. With ``test``, each epoch's
    history record (and the report's curves) also holds CA, and ASR with a trigger, measured
    on ``monitor_rows`` evenly spread test rows (0 = none).

    ``processes`` > 1: the same run in that many processes through ``accelerate launch``
    (one GPU each, or CPU processes with Gloo; :mod:`trainers.distributed`); ``batch_size``
    stays the global batch. Datasets and trigger as paths, no ``config`` object.
    """
    from .distributed import check_processes, world_size

    check_processes(processes, device)
    if processes > 1 and world_size() == 1:
        return _train_in_processes(processes, data=data, out=out, test=test, model=model, preset=preset,
                                   config=config, epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                                   seed=seed, compile=compile, trigger=trigger, pretrained=pretrained,
                                   tta_flip=tta_flip, log=log, defense=defense, defense_options=defense_options,
                                   baseline_metrics=baseline_metrics, monitor_rows=monitor_rows)
    train_ds = _as_dataset(data)
    test_ds = _as_dataset(test) if test is not None else None
    if trigger is None and test_ds is not None:
        trigger = find_trigger(data)
    trigger_spec = load_trigger(trigger) if isinstance(trigger, (str, os.PathLike)) else trigger
    baseline = read_baseline(baseline_metrics)
    arch, cfg = resolve_training(model, preset, config, epochs=epochs, batch_size=batch_size, lr=lr,
                                 compile=compile, device=device, seed=seed)
    if not (~train_ds.unreadable).any():
        raise VetsetError("no readable rows to train on")
    net, info = train_defended(train_ds, arch=arch, cfg=cfg, defense=defense, defense_options=defense_options,
                               seed=seed, pretrained=pretrained, log=log,
                               monitor=monitor_for(test_ds, trigger_spec, monitor_rows, cfg))
    metrics = run_metrics(net, info, train_ds, arch=arch, cfg=cfg, test_ds=test_ds, trigger_spec=trigger_spec,
                          tta_flip=tta_flip, baseline=baseline)
    save_run(net, info, metrics, out, arch=arch, train_ds=train_ds, cfg=cfg, trigger_spec=trigger_spec,
             truth=truth_beside(data))
    return metrics


def monitor_for(test_ds: ImageDataset | None, trigger_spec: dict | None, rows: int, cfg: TrainConfig):
    """The per-epoch CA / ASR check on ``rows`` test rows, or None without a test set."""
    from .evaluate import epoch_monitor_for

    if test_ds is None or rows <= 0 or not (~test_ds.unreadable).any():
        return None
    return epoch_monitor_for(test_ds, trigger_spec, rows=rows, batch_size=cfg.eval_batch_size)


def truth_beside(data):
    """The simulator's truth.parquet beside ``data`` (``vetset poison`` writes both), if any:
    the train report says how many isolated / dropped rows were really dirty."""
    if not isinstance(data, (str, os.PathLike)):
        return None
    path = Path(data).parent / "truth.parquet"
    if not Path(data).is_file() or not path.exists():
        return None
    import pandas as pd

    try:
        return pd.read_parquet(path, columns=["sample_id", "is_poisoned", "is_noisy"])
    except (OSError, ValueError, KeyError):  # not a truth table: the report leaves the share out
        return None


def _train_in_processes(processes: int, *, data, out, test, model, preset, config, epochs, batch_size, lr, device,
                        seed, compile, trigger, pretrained, tta_flip, log, defense, defense_options,
                        baseline_metrics, monitor_rows) -> dict:
    """``python -m trainers train`` with the same choices in ``processes`` processes; the
    metrics rank 0 wrote."""
    import json

    from .distributed import launch

    named = dict(data=data, test=test, trigger=trigger, baseline_metrics=baseline_metrics)
    for key, value in named.items():
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise VetsetError(f"training in several processes takes {key} as a path, not a {type(value).__name__}")
    if config is not None:
        raise VetsetError("training in several processes takes a preset and overrides, not a TrainConfig object")
    argv = ["train", "--data", str(data), "--out", str(out), "--model", model, "--preset", preset,
            "--device", device, "--seed", str(seed), "--defense", defense, "--monitor-rows", str(monitor_rows)]
    for flag, value in (("--test", test), ("--trigger", trigger), ("--baseline-metrics", baseline_metrics),
                        ("--epochs", epochs), ("--batch-size", batch_size), ("--lr", lr),
                        ("--pretrained", pretrained)):
        if value is not None:
            argv += [flag, str(value)]
    if compile:
        argv.append("--compile")
    if tta_flip:
        argv.append("--tta-flip")
    for key, value in (defense_options or {}).items():
        if key == "scores" and value is not None:
            argv += ["--scores", str(value)]
        elif key == "relabel":
            if value:
                argv.append("--relabel")
        else:
            argv += ["--defense-option", f"{key}={json.dumps(value)}"]
    metrics_path = Path(out) / METRICS_FILE
    before = metrics_path.stat().st_mtime_ns if metrics_path.exists() else None
    launch(argv, processes, device, log=log)
    if not metrics_path.exists() or metrics_path.stat().st_mtime_ns == before:
        raise VetsetError(f"training in {processes} processes ended without writing {metrics_path}")
    return json.loads(metrics_path.read_text(encoding="utf-8"))
