"""Devices and the GPU-only switches, in one place.

Everything in vetset that picks a device, enters bf16 autocast, converts a model to
channels_last, wraps it in ``torch.compile`` or retries a batch after running out of memory
goes through this module: no other module names ``"cuda"`` or calls ``.cuda()``
(tests/test_accel.py checks the source tree for it).

The switches:

- ``amp``: bf16 autocast (``torch.autocast(device.type, dtype=torch.bfloat16)``); "auto" = on
  CUDA only.
- ``channels_last``: the model's and the input's memory format; "auto" = on everywhere (it is
  faster on the CPU too for these convnets).
- ``compile``: ``torch.compile`` (inductor; on the CPU it needs a C compiler); "auto" = the
  caller's default (the trainer's is off, the detection model's is on CUDA only).
- ``fused``: the optimiser's fused kernel (``torch.optim.SGD(..., fused=True)``); "auto" = on
  CUDA.

On a CPU-only machine the GPU's settings never run by themselves, so they can be forced on
for a test or a check: ``with force("amp", "channels_last", "compile"): ...`` in Python, or
``VETSET_FORCE=amp,channels_last,compile`` in the environment (for a CLI run). A forced
switch overrides every setting, explicit True/False included, except where a pass cannot
work under it: those callers pass :class:`Never` with the reason (e.g. AGPD's gradients with
respect to intermediate activations, which a compiled graph does not expose).
"""
from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

SWITCHES = ("amp", "channels_last", "compile", "fused")
FORCE_ENV = "VETSET_FORCE"
_forced: ContextVar[frozenset[str] | None] = ContextVar("vetset_forced_switches", default=None)

T = TypeVar("T")


# --------------------------------------------------------------------------- devices


def cuda_available() -> bool:
    """CUDA is usable here (``CUDA_VISIBLE_DEVICES=""`` makes it False, as on a CPU machine)."""
    return torch.cuda.is_available()


def cuda_device_count() -> int:
    """CUDA devices visible to this process (0 on a CPU machine)."""
    return torch.cuda.device_count() if cuda_available() else 0


def wants_cuda(device: Any) -> bool:
    """``device`` names CUDA, or is "auto" on a machine that has it."""
    return is_cuda(device) or (str(device).lower() == "auto" and cuda_available())


def is_cuda(device: Any) -> bool:
    """True for a CUDA device (a torch.device, "cuda", "cuda:1") or a tensor on one."""
    if isinstance(device, torch.Tensor):
        return device.is_cuda
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return str(device).lower().startswith("cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """"auto" -> cuda:LOCAL_RANK when CUDA is available (LOCAL_RANK from torchrun/accelerate,
    default 0), else cpu. "cuda" also picks cuda:LOCAL_RANK. Asking for CUDA where there is
    none is a one-line :class:`pipelines.errors.VetsetError`."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower().strip()
    if name == "auto":
        name = "cuda" if cuda_available() else "cpu"
    if is_cuda(name):
        if not cuda_available():
            from pipelines.errors import VetsetError

            raise VetsetError(f"device {device!r} was asked for but CUDA is not available on this machine "
                              "(use --device cpu or auto)")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            from pipelines.errors import VetsetError

            raise VetsetError(f"device {device!r} was asked for but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        return dev
    try:
        return torch.device(name)
    except RuntimeError as exc:
        from pipelines.errors import VetsetError

        raise VetsetError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N") from exc


def default_device_name() -> str:
    """"cuda" where CUDA is available, else "cpu" (for help texts and defaults)."""
    return "cuda" if cuda_available() else "cpu"


def set_device(device: torch.device) -> None:
    """Make ``device`` the current CUDA device (a no-op on the CPU)."""
    if is_cuda(device):
        torch.cuda.set_device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU); for honest timings."""
    if is_cuda(device):
        torch.cuda.synchronize(device)


def empty_cache(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.empty_cache()


def pinned(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor in page-locked memory when it is bound for CUDA (for ``non_blocking``
    copies); as given otherwise."""
    if is_cuda(device) and t.device.type == "cpu" and not t.is_pinned():
        return t.pin_memory()
    return t


# --------------------------------------------------------------------------- the switches


class Never:
    """A switch a pass cannot run under, with the reason (kept off even when forced)."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return f"Never({self.reason!r})"


def forced() -> frozenset[str]:
    """The switches forced on: those of the innermost :func:`force`, else ``VETSET_FORCE``."""
    inside = _forced.get()
    if inside is not None:
        return inside
    raw = os.environ.get(FORCE_ENV, "")
    names = frozenset(s.strip() for s in raw.split(",") if s.strip())
    unknown = names - set(SWITCHES)
    if unknown:
        from pipelines.errors import VetsetError

        raise VetsetError(f"{FORCE_ENV} names unknown switch(es) {sorted(unknown)}; known: {', '.join(SWITCHES)}")
    return names


@contextlib.contextmanager
def force(*switches: str) -> Iterator[None]:
    """Force GPU-only switches on (on any device) inside the block; ``force()`` forces none
    (an fp32 eager reference even when ``VETSET_FORCE`` is set)."""
    unknown = set(switches) - set(SWITCHES)
    if unknown:
        raise ValueError(f"unknown switch(es) {sorted(unknown)}; known: {SWITCHES}")
    token = _forced.set(frozenset(switches))
    try:
        yield
    finally:
        _forced.reset(token)


@dataclass(frozen=True)
class Switches:
    """The resolved switches of one pass on one device."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    fused: bool = False

    def autocast(self):
        """bf16 autocast on this device's type when ``amp``, a no-op context otherwise."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (in place) in the chosen memory format."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A float NCHW batch in the chosen memory format."""
        if x.ndim != 4:
            return x
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def compiled(self, model: nn.Module) -> nn.Module:
        """``torch.compile(model)`` when ``compile``, the model itself otherwise (the weights are
        shared: train or read the original module as usual)."""
        return torch.compile(model) if self.compile else model

    def describe(self) -> dict:
        return {"device": str(self.device), "amp": self.amp, "channels_last": self.channels_last,
                "compile": self.compile, "fused": self.fused}


def _resolve(name: str, value: Any, auto: bool, force_on: frozenset[str]) -> bool:
    if isinstance(value, Never):
        return False
    if name in force_on:
        return True
    if value == "auto" or value is None:
        return bool(auto)
    if isinstance(value, str):
        low = value.lower()
        if low in ("1", "true", "on", "yes"):
            return True
        if low in ("0", "false", "off", "no"):
            return False
        raise ValueError(f"{name} must be auto, True or False, got {value!r}")
    return bool(value)


def switches(device: str | torch.device | None = "auto", *, amp: Any = "auto", channels_last: Any = "auto",
             compile: Any = False, fused: Any = "auto") -> Switches:
    """Resolve the switches of one pass: "auto" amp = on CUDA, "auto" channels_last = on;
    ``compile`` "auto" = on CUDA (callers whose default is off pass False). Forced switches
    (:func:`force`, ``VETSET_FORCE``) win over everything but :class:`Never`."""
    dev = resolve_device(device)
    on = forced()
    cuda = is_cuda(dev)
    return Switches(device=dev,
                    amp=_resolve("amp", amp, cuda, on),
                    channels_last=_resolve("channels_last", channels_last, True, on),
                    compile=_resolve("compile", compile, cuda, on),
                    fused=_resolve("fused", fused, cuda, on))


def autocast_for(x: torch.Tensor, amp: Any = "auto"):
    """bf16 autocast for a pass over ``x`` on its device: on CUDA (or where forced), off on
    the CPU."""
    return switches(x.device, amp=amp).autocast()


# --------------------------------------------------------------------------- out of memory


def is_oom(exc: BaseException) -> bool:
    """A device out-of-memory error (CUDA's, or the allocator's message on other backends)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def oom_error(device: Any, batch_size: int, option: str):
    from pipelines.errors import VetsetError

    return VetsetError(f"out of memory on {device} even at batch size {batch_size} (half the one asked for): "
                       f"lower {option}")


def with_oom_retry(run: Callable[[int], T], batch_size: int, *, option: str, device: Any = None) -> T:
    """``run(batch_size)``; when it runs out of device memory, ``run(batch_size // 2)`` once
    (after freeing the cache); when that runs out too, a one-line error naming ``option``
    (the setting that sets the batch size). ``run`` must start over from scratch when called
    again (e.g. an inference pass that collects its outputs itself)."""
    try:
        return run(batch_size)
    except Exception as exc:  # noqa: BLE001  (anything but an OOM is re-raised as it is)
        if not is_oom(exc):
            raise
    half = max(1, batch_size // 2)
    if device is not None:
        empty_cache(torch.device(device) if not isinstance(device, torch.device) else device)
    try:
        return run(half)
    except Exception as exc:  # noqa: BLE001
        if not is_oom(exc):
            raise
        raise oom_error(device or "the device", half, option) from None
