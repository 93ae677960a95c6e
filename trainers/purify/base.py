"""The purification registry and the signature every method shares.

A method is a :class:`Purifier`: a ``Config`` dataclass (the published defaults, cited in
its docstring; every field can be overridden, e.g. few epochs for CPU tests) and
``run(model, clean, cfg, *, device, seed, log) -> (model, info)``. ``model`` is the bare
:class:`trainers.models.ImageClassifier`; the returned model may be the same object changed
in place, a model with an inserted layer (``info["modifications"]``) or an inference wrapper
(``info["wrapper"]``), and ``info`` holds what the method found (JSON-able).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

from torch import nn

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError
from pipelines.registry import Registry


@dataclass
class Purifier:
    name: str
    config: type
    run: Callable[..., tuple[nn.Module, dict]]
    summary: str


PURIFIERS: Registry[Purifier] = Registry("purification method")


def register(name: str, config: type, summary: str) -> Callable:
    def deco(fn: Callable[..., tuple[nn.Module, dict]]) -> Callable:
        PURIFIERS.register(name)(Purifier(name, config, fn, summary))
        return fn

    return deco


def make_config(method: str, overrides: dict | None = None) -> Any:
    """The method's Config with ``overrides`` (unknown keys are a one-line error)."""
    cls = PURIFIERS.get(method).config
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise VetsetError(f"{method} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(names))}")
    try:
        return cls(**(overrides or {}))
    except (TypeError, ValueError) as exc:
        raise VetsetError(f"{method} options: {exc}") from None


def config_dict(cfg: Any) -> dict:
    return asdict(cfg)


def purify(method: str, model: nn.Module, clean: ImageDataset, cfg: Any = None, *, device: Any = "auto",
           seed: int = 0, log: Callable[[str], Any] | None = None) -> tuple[nn.Module, dict]:
    """Run ``method`` (a name in :data:`PURIFIERS`) on ``model`` with the ``clean`` set."""
    import time

    from ..loop import resolve_device

    entry = PURIFIERS.get(method)
    if cfg is None or isinstance(cfg, dict):
        cfg = make_config(method, cfg)
    if len(clean) == 0 or int((~clean.unreadable).sum()) == 0:
        raise VetsetError("the clean set is empty")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    model, info = entry.run(model, clean, cfg, device=dev, seed=int(seed), log=log)
    info = dict(info)
    info.setdefault("modifications", [])
    info.setdefault("wrapper", None)
    info.update(method=method, config=config_dict(cfg), seconds=time.perf_counter() - t0,
                n_clean=int((~clean.unreadable).sum()))
    return model.eval(), info
