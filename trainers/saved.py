"""The saved-model contract: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` says how to rebuild the module (architecture name from the model registry,
number of classes, input size, normalisation, architecture keyword arguments) and which
inference wrapper, if any, must be put around it. ``load_model`` rebuilds the module from
that description and loads the tensors with safetensors: no pickle, and nothing in the
folder is ever executed.

Inference wrappers (:data:`WRAPPERS`) let a defense ship behaviour that must always run
at inference, e.g. PDB's "add the defensive trigger, then un-permute the labels". A wrapper
factory takes the bare classifier plus JSON parameters and returns a module; the loaded
model is the wrapped one. Register one with::

    @WRAPPERS.register("pdb")
    def pdb_wrapper(inner: nn.Module, **params) -> nn.Module: ...

A wrapper module should keep the bare model as ``.inner`` (so detectors can still reach
``inner.net``) and set ``wrapper_name``.

Architecture modifications (:data:`MODIFICATIONS`) describe a change to the built network
that its weights need, e.g. NPD's polarizer layer inserted before ``net.layer4.1.conv1``.
``config.json`` lists them as ``{"name", "params"}`` under ``modifications``; ``load_model``
applies them in order right after building the architecture, before loading the weights.
The post-training purification package (``trainers.purify``) registers its wrappers (STRIP)
and modifications (NPD) when imported; ``load_model`` imports it when a name is unknown.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from pipelines.atomic import atomic_path, atomic_write_json, read_json
from pipelines.errors import VetsetError
from pipelines.registry import Registry

from .models import ImageClassifier, build_model

FORMAT = "vetset-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# the 64-bit digests (pipelines.dataset.row_digests) of the rows the model was trained on,
# sorted, as a plain .npy (read with allow_pickle=False): purification uses them to tell
# which of its clean rows the model has already fitted (trainers/purify/run.py)
TRAINING_ROWS_FILE = "training_rows.npy"

WRAPPERS: Registry[Callable[..., nn.Module]] = Registry("model wrapper")
# name -> fn(model: ImageClassifier, **params) -> None, changing the model in place
MODIFICATIONS: Registry[Callable[..., None]] = Registry("architecture modification")


def _load_plugins() -> None:
    """Register the wrappers and modifications that live in other trainers packages."""
    import trainers.purify  # noqa: F401  (registers strip, npd's polarizer)


def apply_modifications(model: nn.Module, modifications: Sequence[dict] | None) -> nn.Module:
    """Apply ``[{"name", "params"}, ...]`` (see :data:`MODIFICATIONS`) to ``model`` in place."""
    for mod in modifications or []:
        if mod["name"] not in MODIFICATIONS:
            _load_plugins()
        MODIFICATIONS.get(mod["name"])(model, **dict(mod.get("params") or {}))
    return model


class PermuteLogits(nn.Module):
    """out[:, k] = inner(x)[:, perm[k]]: maps the inner model's label space back to the
    user's (e.g. undoing PDB's h(y) = (y + 1) mod K with perm[k] = (k + 1) mod K)."""

    wrapper_name = "permute_logits"

    def __init__(self, inner: nn.Module, perm: Sequence[int]):
        super().__init__()
        self.inner = inner
        self.register_buffer("perm", torch.tensor([int(p) for p in perm], dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).index_select(1, self.perm.to(x.device))


@WRAPPERS.register("permute_logits")
def _permute_logits(inner: nn.Module, perm: Sequence[int]) -> nn.Module:
    return PermuteLogits(inner, perm)


def pdb_trigger_slices(height: int, width: int, size: int, corner: str) -> tuple[slice, slice]:
    """Rows and columns of PDB's ``size`` x ``size`` defensive trigger in ``corner``."""
    if corner not in ("top_left", "top_right", "bottom_left", "bottom_right"):
        raise ValueError(f"corner must be top_left, top_right, bottom_left or bottom_right, got {corner!r}")
    size = min(int(size), height, width)
    r0 = 0 if corner.startswith("top") else height - size
    c0 = 0 if corner.endswith("left") else width - size
    return slice(r0, r0 + size), slice(c0, c0 + size)


class DefensiveTrigger(nn.Module):
    """PDB's inference (Wei et al. 2024, "Mitigating Backdoor Attack by Injecting Proactive
    Defensive Backdoor"): stamp the defensive trigger (a ``size`` x ``size`` square set to
    ``value``, 2.0 by default, beyond the [0, 1] pixel range) on every input, run the inner
    model, and undo the reversible label map h(y) = (y + shift) mod K:
    out[:, k] = inner(x + trigger)[:, (k + shift) mod K]."""

    wrapper_name = "pdb"

    def __init__(self, inner: nn.Module, num_classes: int, value: float = 2.0, size: int = 7,
                 corner: str = "top_left", shift: int = 1):
        super().__init__()
        self.inner = inner
        self.value, self.size, self.corner, self.shift = float(value), int(size), str(corner), int(shift)
        self.num_classes = int(num_classes)
        pdb_trigger_slices(32, 32, self.size, self.corner)  # validate the corner now
        perm = [(k + self.shift) % self.num_classes for k in range(self.num_classes)]
        self.register_buffer("perm", torch.tensor(perm, dtype=torch.long), persistent=False)

    def stamp(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = pdb_trigger_slices(x.shape[-2], x.shape[-1], self.size, self.corner)
        x = x.clone()
        x[..., rows, cols] = self.value
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.stamp(x)).index_select(1, self.perm.to(x.device))


@WRAPPERS.register("pdb")
def _pdb(inner: nn.Module, num_classes: int, value: float = 2.0, size: int = 7, corner: str = "top_left",
         shift: int = 1) -> nn.Module:
    return DefensiveTrigger(inner, num_classes, value=value, size=size, corner=corner, shift=shift)


def _wrapper_spec(wrapper: Any) -> dict | None:
    if wrapper is None:
        return None
    if isinstance(wrapper, str):
        wrapper = {"name": wrapper, "params": {}}
    if not isinstance(wrapper, dict) or "name" not in wrapper:
        raise ValueError("wrapper must be a name or {'name': ..., 'params': {...}}")
    spec = {"name": str(wrapper["name"]), "params": dict(wrapper.get("params") or {})}
    WRAPPERS.get(spec["name"])  # fail early on an unknown wrapper
    json.dumps(spec["params"])  # params must be plain JSON
    return spec


def save_model(model: nn.Module, dir: str | os.PathLike, *, arch: str, num_classes: int,
               class_names: Sequence[str] | None, input_size: Sequence[int],
               mean: Sequence[float], std: Sequence[float], wrapper: str | dict | None = None,
               arch_kwargs: dict | None = None, extra: dict | None = None,
               modifications: Sequence[dict] | None = None, training_rows: Any = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``dir`` (each atomically).

    ``model`` is the bare :class:`ImageClassifier` or, when ``wrapper`` is given, either
    that bare model (it gets wrapped here) or the already wrapped module. ``extra`` is free
    JSON (training config, metrics...). ``modifications`` lists the architecture changes
    already applied to ``model`` (see :data:`MODIFICATIONS`). ``training_rows``: the row
    digests of the data the model was trained on (:func:`pipelines.dataset.row_digests`),
    written to ``training_rows.npy`` and counted in the config. Returns the folder.
    """
    from safetensors.torch import save_file

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    if wrapper is not None and (wrapper if isinstance(wrapper, str) else wrapper.get("name")) not in WRAPPERS:
        _load_plugins()
    spec = _wrapper_spec(wrapper)
    if spec is not None and getattr(model, "wrapper_name", None) != spec["name"]:
        model = WRAPPERS.get(spec["name"])(model, **spec["params"])
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # tied/shared tensors would make safetensors refuse; clone so every entry owns its memory
    state = {k: v.clone() for k, v in state.items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "num_classes": int(num_classes),
        "class_names": [str(c) for c in class_names] if class_names is not None else None,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "wrapper": spec,
        "modifications": [{"name": str(m["name"]), "params": dict(m.get("params") or {})}
                          for m in (modifications or [])],
        "weights": WEIGHTS_FILE,
        "torch_version": torch.__version__,
        "extra": extra or {},
    }
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    if training_rows is not None:
        rows = np.unique(np.asarray(training_rows, dtype=np.uint64))
        with atomic_path(out / TRAINING_ROWS_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, rows, allow_pickle=False)
        config["training_rows"] = {"file": TRAINING_ROWS_FILE, "rows": int(len(rows))}
    atomic_write_json(config, out / CONFIG_FILE)
    if training_rows is None and (out / TRAINING_ROWS_FILE).exists():
        (out / TRAINING_ROWS_FILE).unlink()  # a stale list from a model saved here before (the config no longer names it)
    return out


def read_training_rows(dir: str | os.PathLike) -> np.ndarray | None:
    """The sorted row digests of a saved model's training data, or None when the model did
    not record them (saved by an older vetset, or from a bare state dict)."""
    config = read_config(dir)
    entry = config.get("training_rows")
    if not entry:
        return None
    path = Path(dir) / TRAINING_ROWS_FILE
    try:
        rows = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VetsetError(f"{path}: unreadable training-row list ({type(exc).__name__}); delete it and the "
                          f"'training_rows' entry of {CONFIG_FILE} to go on without it") from None
    if rows.dtype != np.uint64 or rows.ndim != 1 or len(rows) != int(entry.get("rows", -1)):
        raise VetsetError(f"{path}: not the training-row list {CONFIG_FILE} describes "
                          f"({rows.dtype}, {rows.shape}; expected {entry.get('rows')} uint64 digests)")
    return rows


def read_config(dir: str | os.PathLike) -> dict:
    path = Path(dir) / CONFIG_FILE
    config = read_json(path, f"not a saved vetset model (no {CONFIG_FILE}): {dir}")
    if config.get("format") != FORMAT:
        raise VetsetError(f"{path} is not a {FORMAT} config")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise VetsetError(f"{path} has format_version {config['format_version']}; this vetset reads up to {FORMAT_VERSION}")
    return config


def load_model(dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model described by ``config.json`` and load ``model.safetensors`` into it
    (strictly: every tensor must match). Returns the wrapped model when a wrapper is named,
    in eval mode, with the config available as ``model.vetset_config``."""
    from safetensors.torch import load_file

    config = read_config(dir)
    name = str(config.get("weights", WEIGHTS_FILE))
    if Path(name).name != name or not name.endswith(".safetensors"):
        raise VetsetError(f"{CONFIG_FILE}: 'weights' must be a .safetensors file name in the folder, got {name!r}")
    weights = Path(dir) / name
    if not weights.is_file():
        raise VetsetError(f"weights file missing: {weights}")
    model: nn.Module = build_model(config["arch"], config["num_classes"], tuple(config["input_size"]),
                                   config["mean"], config["std"], **config.get("arch_kwargs", {}))
    apply_modifications(model, config.get("modifications"))
    spec = config.get("wrapper")
    if spec:
        if spec["name"] not in WRAPPERS:
            _load_plugins()
        model = WRAPPERS.get(spec["name"])(model, **spec.get("params", {}))
    state = load_file(str(weights), device="cpu")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise VetsetError(f"{weights} does not match {config['arch']}: {str(exc).splitlines()[0]}") from None
    model.vetset_config = config
    return model.to(device).eval()


def bare_model(model: nn.Module) -> ImageClassifier:
    """The :class:`ImageClassifier` inside any stack of inference wrappers."""
    while not isinstance(model, ImageClassifier) and hasattr(model, "inner"):
        model = model.inner
    return model
