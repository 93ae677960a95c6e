"""The purification registry and the signature every method shares.

A method is a :class:`Purifier`: a ``Config`` dataclass (the published defaults, cited in
its docstring; every field can be overridden, e.g. few epochs for CPU tests) and
``run(model, clean, cfg, *, device, seed, log) -> (model, info)``. ``model`` is the bare
:class:`trainers.models.ImageClassifier`; the returned model may be the same object changed
in place, a model with an inserted layer (``info["modifications"]``) or an inference wrapper
(``info["wrapper"]``), and ``info`` holds what the method found (JSON-able).

Profiles: the Config's defaults are the published ones (PreAct-ResNet18 on a GPU, 5% of
CIFAR-10 as clean data). A method may also register ``cpu``: the schedule it runs on the CPU
unless told otherwise (optimizer steps that fit about 5 minutes on 2 cores for 500 clean
rows, docs/purification.md says how each was chosen). ``profile="auto"`` takes ``cpu`` on a
CPU device and ``published`` elsewhere. The user's options always win; a user's ``epochs``
also drops the profile's ``steps`` of the same stage and the other way round
(:data:`SCHEDULE_PARTNERS`), so an explicit length is never overridden by the profile's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
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
    cpu: dict = field(default_factory=dict)  # the CPU profile's options (see the module docstring)


PURIFIERS: Registry[Purifier] = Registry("purification method")
PROFILES = ("auto", "cpu", "published")
# a length given in epochs and one given in optimizer steps: setting either drops the profile's other
SCHEDULE_PARTNERS = {"epochs": "steps", "warmup_epochs": "warmup_steps", "unlearn_max_epochs": "unlearn_max_steps"}
SCHEDULE_PARTNERS.update({v: k for k, v in list(SCHEDULE_PARTNERS.items())})


def register(name: str, config: type, summary: str, cpu: dict | None = None) -> Callable:
    def deco(fn: Callable[..., tuple[nn.Module, dict]]) -> Callable:
        PURIFIERS.register(name)(Purifier(name, config, fn, summary, dict(cpu or {})))
        return fn

    return deco


def resolve_profile(profile: str, device: Any) -> str:
    """"cpu" or "published" ("auto": cpu on a CPU device)."""
    if profile not in PROFILES:
        raise VetsetError(f"unknown profile {profile!r}; profiles: {', '.join(PROFILES)}")
    if profile != "auto":
        return profile
    from ..loop import resolve_device

    return "cpu" if resolve_device(device).type == "cpu" else "published"


def profile_options(method: str, overrides: dict | None = None, profile: str = "published") -> dict:
    """The options a method runs with: the ``profile``'s (resolved: "cpu" or "published"),
    then the user's ``overrides``; the profile's length of a stage is dropped when the user
    gave its partner (``epochs`` for ``steps``...)."""
    if profile not in ("cpu", "published"):
        raise VetsetError(f"profile must be resolved to cpu or published, got {profile!r}")
    user = dict(overrides or {})
    base = dict(PURIFIERS.get(method).cpu) if profile == "cpu" else {}
    for key in list(base):
        if key in user or SCHEDULE_PARTNERS.get(key) in user:
            del base[key]
    return {**base, **user}


def make_config(method: str, overrides: dict | None = None, profile: str = "published") -> Any:
    """The method's Config with the ``profile``'s options and ``overrides`` (unknown keys are
    a one-line error)."""
    cls = PURIFIERS.get(method).config
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise VetsetError(f"{method} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(names))}")
    try:
        return cls(**profile_options(method, overrides, profile))
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
