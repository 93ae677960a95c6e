"""The fast training loop (one loop for plain training and every in-training defense).

The decoded dataset is moved to the device once, as a uint8 NHWC tensor. Each step indexes
a batch there, augments it there (:mod:`trainers.augment`), converts it to float (which
yields a channels_last tensor for free) and runs the model, in bf16 autocast on CUDA.
Defenses change the loop through :class:`TrainHooks` instead of writing their own.

Repeatable: the same model initialisation, data and ``TrainConfig.seed`` give the same
weights on the CPU (on CUDA, cuDNN's non-deterministic kernels may differ in the last bits).

Several processes: when started by ``accelerate launch`` or ``torchrun`` (``WORLD_SIZE`` > 1
in the environment; ``--processes N`` does it), :func:`fit` hands the process group, the
devices, DDP, the optimiser and mixed precision to ``accelerate`` (:mod:`trainers.distributed`)
and gives each process its share of every epoch's permutation; ``batch_size`` stays the global
batch. See docs/training.md.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .accel import (Switches, empty_cache, is_cuda, is_oom, oom_error, pinned, resolve_device,  # noqa: F401 (re-exported)
                    set_device, switches, synchronize, with_oom_retry)
from .augment import AugmentConfig, augment_batch, to_float
from .distributed import is_main_process, start as start_distributed  # noqa: F401 (is_main_process re-exported)

SCHEDULES = ("onecycle", "cosine", "multistep", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")


@dataclass
class TrainConfig:
    """How to train. The defaults are the fast GPU recipe for PreAct-ResNet18 on CIFAR-10
    (OneCycle to peak lr 0.4, batch 512, nesterov SGD, wd 5e-4, label smoothing 0.1), which
    reached 91.2% in 30 epochs on the shared JPEG CIFAR-10 (../shared/ENVIRONMENT.md). See
    :data:`PRESETS` for BackdoorBench's recipe and a CPU one.

    schedule: "onecycle" (linear warm-up from lr/``div_factor`` over ``warmup_frac`` of the
    steps, then linear decay to 0), "cosine" (per step, to 0), "multistep" (x ``gamma`` at
    each epoch in ``milestones``) or "constant". All are stepped per batch.
    amp / channels_last: "auto" = bf16 autocast on CUDA only; channels_last everywhere (it is
    faster on the CPU too for these convnets). device: "auto" = cuda:LOCAL_RANK if CUDA is
    available, else cpu.
    """

    epochs: int = 30
    batch_size: int = 512
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    optimizer: str = "sgd"
    schedule: str = "onecycle"
    warmup_frac: float = 0.25
    div_factor: float = 10.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    label_smoothing: float = 0.1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_grad_norm: float | None = None
    device: str = "auto"
    amp: Any = "auto"  # "auto" | True | False
    channels_last: Any = "auto"
    compile: bool = False
    fused: Any = "auto"  # the optimiser's fused kernel: "auto" = on CUDA
    seed: int = 0
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        self.milestones = tuple(int(m) for m in self.milestones)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise ValueError("epochs >= 0, batch_size >= 1 and lr >= 0 are required")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **overrides: Any) -> "TrainConfig":
        d = self.to_dict()
        unknown = set(overrides) - set(d)
        if unknown:
            raise TypeError(f"unknown TrainConfig option(s): {sorted(unknown)}")
        d.update(overrides)
        return TrainConfig.from_dict(d)


def _fast() -> TrainConfig:
    """ENVIRONMENT.md's fast recipe: 91.2% CA in 30 epochs with PreAct-ResNet18 on an H100."""
    return TrainConfig()


def _backdoorbench() -> TrainConfig:
    """BackdoorBench's default training (specs/defenses.md): 100 epochs, batch 128, SGD lr
    0.01, momentum 0.9, wd 5e-4, cosine; RandomCrop(32, pad 4) (zero padding) + flip."""
    return TrainConfig(epochs=100, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4,
                       nesterov=False, schedule="cosine", label_smoothing=0.0,
                       augment=AugmentConfig(pad_mode="zero"))


def _cpu_small() -> TrainConfig:
    """For small_cnn on a few CPU cores: few epochs, batch 128, OneCycle to 0.1 (chosen here
    by a short sweep on CIFAR-10 slices; not a published recipe)."""
    return TrainConfig(epochs=10, batch_size=128, lr=0.1, schedule="onecycle")


# Named factories: call them to get a fresh config (never mutate a shared one).
PRESETS: dict[str, Callable[[], TrainConfig]] = {
    "fast": _fast,
    "backdoorbench": _backdoorbench,
    "cpu_small": _cpu_small,
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    from pipelines.errors import VetsetError

    if name not in PRESETS:
        raise VetsetError(f"unknown training preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    cfg = PRESETS[name]()
    return cfg.replace(**overrides) if overrides else cfg


@dataclass
class TrainHooks:
    """How a defense changes the loop without writing its own.

    loss_fn(per_sample_loss, logits, labels, batch_idx) -> scalar: replaces the batch mean of
        the per-sample cross-entropy (e.g. ABL's flooding, see :func:`flooding_loss`).
        ``batch_idx`` holds the rows' dataset indices; rows from ``extra_batch`` carry -1.
    extra_batch(epoch, step) -> (images, labels) | None: rows appended to every batch. uint8
        NHWC images get the loop's augmentation like the main rows; a float NCHW tensor in
        [0, 1] (or beyond, e.g. PDB's 2.0 trigger) is used as given (augment it yourself).
    transform(x, labels, batch_idx) -> x: applied to the main rows' float NCHW batch after
        augmentation (not to the extra rows).
    ascent: True, or epoch -> bool: negate the loss (gradient ascent, for unlearning).
    on_epoch_end(epoch, model) -> bool: called after each epoch; True stops training.
    on_epoch_start(epoch, model): called after the model is put in train mode at the start of
        each epoch (e.g. to keep BatchNorm statistics frozen with ``model.eval()``).
    extra_loss(model, x, labels, logits, batch_idx) -> scalar | None: added to the objective
        (before ascent); ``x``/``labels``/``logits`` hold the main and extra rows. For terms that
        need their own forward passes (an adversarial example found by PGD, a frozen reference).
    after_backward(model, recompute): called after ``loss.backward()`` and before the optimizer
        step; ``recompute()`` runs the same batch forward again (hooks included) and returns the
        new objective, not yet backpropagated. For second gradient passes (SAM, gradient-norm
        penalties): perturb the weights, ``recompute().backward()``, restore, set ``.grad``.
    after_step(model): called after each optimizer step (e.g. re-apply a pruning mask, clamp
        mask parameters into [0, 1]).
    """

    loss_fn: Callable[..., torch.Tensor] | None = None
    extra_batch: Callable[[int, int], Any] | None = None
    transform: Callable[..., torch.Tensor] | None = None
    ascent: bool | Callable[[int], bool] = False
    on_epoch_end: Callable[[int, nn.Module], Any] | None = None
    on_epoch_start: Callable[[int, nn.Module], Any] | None = None
    extra_loss: Callable[..., torch.Tensor | None] | None = None
    after_backward: Callable[[nn.Module, Callable[[], torch.Tensor]], Any] | None = None
    after_step: Callable[[nn.Module], Any] | None = None

    def ascending(self, epoch: int) -> bool:
        return bool(self.ascent(epoch)) if callable(self.ascent) else bool(self.ascent)


def flooding_loss(gamma: float = 0.5, form: str = "sign") -> Callable[..., torch.Tensor]:
    """ABL's local gradient ascent on the batch-mean loss l (Li et al., NeurIPS 2021):
    "sign": sign(l - gamma) * l (the authors' code); "flood": |l - gamma| + gamma (flooding,
    Ishida et al. 2020). Both have the same gradient."""
    if form not in ("sign", "flood"):
        raise ValueError(f"form must be 'sign' or 'flood', got {form!r}")

    def loss_fn(per_sample: torch.Tensor, logits, labels, batch_idx) -> torch.Tensor:
        mean = per_sample.mean()
        if form == "sign":
            return torch.sign(mean - gamma) * mean
        return (mean - gamma).abs() + gamma

    return loss_fn


@dataclass
class Checkpoint:
    """Where :func:`fit` keeps its state after every epoch, so that a run killed at any
    point (kill -9 included) resumes at the epoch it was in: the weights, the optimizer and
    schedule, the data order and augmentation generators, the global RNG, the history, and
    ``state()`` of whoever else needs saving (a hook's recorder; ``restore`` puts it back).
    The file records what it belongs to (the TrainConfig, the data's size and a checksum
    of the labels, the model's parameter shapes): a file of another run is ignored, never
    resumed from. Written atomically; ``remove`` deletes it when training finished."""

    path: Any
    state: Callable[[], dict] | None = None
    restore: Callable[[dict], None] | None = None
    remove_when_done: bool = False


def _checkpoint_identity(cfg: TrainConfig, targets: torch.Tensor, model: nn.Module) -> str:
    import hashlib
    import json

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    h.update(str(len(targets)).encode())
    h.update(targets.detach().cpu().numpy().astype(np.int64).tobytes())
    h.update(json.dumps([[k, list(v.shape)] for k, v in model.state_dict().items()]).encode())
    return h.hexdigest()


def _save_checkpoint(ck: Checkpoint, payload: dict) -> None:
    from pathlib import Path

    path = Path(ck.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_checkpoint(ck: Checkpoint, identity: str) -> dict | None:
    from pathlib import Path

    path = Path(ck.path)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start over
        return None
    return payload if isinstance(payload, dict) and payload.get("identity") == identity else None


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sec_per_epoch(self) -> float:
        return self.seconds / max(1, len(self.history))


# --------------------------------------------------------------------------- devices


def as_uint8_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        return images
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {arr.dtype}")
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, copy=True, order="C")  # torch wants writable, contiguous memory
    return torch.from_numpy(arr)


# --------------------------------------------------------------------------- schedules


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at optimizer step ``step`` (0-based)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    t = min(step, total) / total
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if cfg.schedule == "multistep":
        epoch = step // max(1, steps_per_epoch)
        return cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    # onecycle
    w = cfg.warmup_frac
    start = 1.0 / cfg.div_factor
    if w > 0 and t < w:
        return start + (1.0 - start) * t / w
    return max(0.0, (1.0 - t) / max(1e-12, 1.0 - w))


def make_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimiser of ``cfg``; ``fused``: its single-kernel implementation (one launch for
    all parameters instead of one per tensor: what matters on a GPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    extra = {"fused": True} if fused else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0, **extra)
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


# --------------------------------------------------------------------------- training


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    out = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
    if len(out) > 1 and out[-1][1] - out[-1][0] < 2:  # BatchNorm cannot train on one row
        out.pop()
    return out


def _extra_rows(extra: Any, device: torch.device, cfg: TrainConfig, gen: torch.Generator,
                channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = extra
    images = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    labels = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.array(labels, dtype=np.int64))
    images = pinned(images, device).to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        if cfg.augment.active:
            images = augment_batch(images, cfg.augment, generator=gen)
        images = to_float(images)
    if not channels_last:
        images = images.contiguous()
    return images, labels.to(device=device, dtype=torch.long)


_EPOCH_MONITOR: contextvars.ContextVar[Callable[[nn.Module], dict] | None] = contextvars.ContextVar(
    "vetset_epoch_monitor", default=None)


@contextlib.contextmanager
def epoch_monitor(check: Callable[[nn.Module], dict] | None):
    """Within the block, every :func:`fit` adds ``check(model)`` (e.g. per-epoch CA / ASR on
    test rows, :func:`trainers.evaluate.epoch_monitor_for`) to each epoch's history record.
    The check runs with the RNG state saved and restored and the modules' train/eval modes
    put back, so the weights are those of a run without it. Scoped to the calling context
    (a contextvar), so a training in another thread or task is not monitored."""
    token = _EPOCH_MONITOR.set(check)
    try:
        yield
    finally:
        _EPOCH_MONITOR.reset(token)


def _monitored(model: nn.Module, device: torch.device) -> dict:
    check = _EPOCH_MONITOR.get()
    if check is None:
        return {}
    modes = [m.training for m in model.modules()]
    with torch.random.fork_rng(devices=[device] if is_cuda(device) else []):
        result = check(model)
    for m, mode in zip(model.modules(), modes):
        m.training = mode
    return result


def fit(model: nn.Module, images: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray | torch.Tensor,
        cfg: TrainConfig | None = None, hooks: TrainHooks | None = None,
        log: Callable[[dict], Any] | None = None, checkpoint: Checkpoint | None = None) -> TrainResult:
    """Train ``model`` (float [0,1] NCHW in, logits out) on uint8 NHWC ``images``.

    ``checkpoint``: save the state after every epoch and resume from it (see
    :class:`Checkpoint`); a resumed run gives the weights of an uninterrupted one.

    Returns the same model (moved to the device, in eval mode) and one dict per epoch:
    ``epoch``, ``loss`` (mean per-sample cross-entropy of the main rows), ``objective``
    (mean of what was optimised, after hooks and ascent), ``acc`` (training accuracy on the
    augmented main rows), ``lr`` (at the epoch's end), ``seconds``; inside
    :func:`epoch_monitor`, also what its check returns (e.g. ``clean_acc``, ``asr``).
    """
    cfg = cfg or TrainConfig()
    hooks = hooks or TrainHooks()
    sw = switches(cfg.device, amp=cfg.amp, channels_last=cfg.channels_last, compile=cfg.compile, fused=cfg.fused)
    device = sw.device
    set_device(device)
    dist = start_distributed(device, sw.amp)
    rank, world = (dist.rank, dist.world) if dist is not None else (0, 1)
    channels_last = sw.channels_last

    torch.manual_seed(cfg.seed)
    data = as_uint8_tensor(images)
    if data.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C) uint8, got shape {tuple(data.shape)}")
    data = data.to(device)
    targets = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.array(labels, dtype=np.int64))
    targets = targets.to(device=device, dtype=torch.long).reshape(-1)
    if len(targets) != len(data):
        raise ValueError(f"{len(data)} images but {len(targets)} labels")
    n = len(data)

    sw.prepare(model)
    optimizer = make_optimizer(model, cfg, fused=sw.fused)
    train_model: nn.Module = model
    if dist is not None:
        train_model, optimizer = dist.prepare(model, optimizer)
    train_model = sw.compiled(train_model)

    n_local = n // world
    batches = _batches(n_local, dist.local_batch(cfg.batch_size) if dist is not None else cfg.batch_size)
    steps_per_epoch = max(1, len(batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
    perm_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + 17 + rank)

    history: list[dict] = []
    start_epoch = 0
    identity = None
    if checkpoint is not None and world == 1:
        identity = _checkpoint_identity(cfg, targets, model)
        saved = _load_checkpoint(checkpoint, identity)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            perm_gen.set_state(saved["perm_gen"])
            aug_gen.set_state(saved["aug_gen"].to(aug_gen.get_state().device))
            torch.set_rng_state(saved["rng"])
            history = list(saved["history"])
            start_epoch = cfg.epochs if saved.get("stopped") else int(saved["epoch"]) + 1
            if checkpoint.restore is not None and saved.get("extra") is not None:
                checkpoint.restore(saved["extra"])
    ascent = False

    def objective(x: torch.Tensor, y: torch.Tensor, bidx: torch.Tensor):
        with sw.autocast():
            logits = train_model(x)
        logits = logits.float()
        per = F.cross_entropy(logits, y, reduction="none", label_smoothing=cfg.label_smoothing)
        loss = hooks.loss_fn(per, logits, y, bidx) if hooks.loss_fn is not None else per.mean()
        if hooks.extra_loss is not None:
            extra_term = hooks.extra_loss(model, x, y, logits, bidx)
            if extra_term is not None:
                loss = loss + extra_term
        if ascent:
            loss = -loss
        return loss, logits, per

    backward = dist.backward if dist is not None else torch.Tensor.backward

    def train_step(x: torch.Tensor, y: torch.Tensor, bidx: torch.Tensor, parts: int):
        """Forward and backward of one batch, in ``parts`` pieces whose gradients add up to
        the whole batch's (the retry after running out of memory; BatchNorm then sees half
        batches, and a loss that is not a batch mean is approximated by its pieces' mean)."""
        optimizer.zero_grad(set_to_none=True)
        if parts == 1:
            loss, logits, per = objective(x, y, bidx)
            backward(loss)
            if hooks.after_backward is not None:
                hooks.after_backward(model, lambda: objective(x, y, bidx)[0])
            return loss, logits, per
        if hooks.after_backward is not None:  # a second pass over the whole batch (SAM) cannot be split
            raise oom_error(device, (len(y) + 1) // 2, "the batch size (batch_size, --batch-size)")
        total = len(y)
        bounds = [(i * total // parts, (i + 1) * total // parts) for i in range(parts)]
        losses, logit_parts, per_parts = [], [], []
        try:
            for a, b in bounds:
                piece_loss, piece_logits, piece_per = objective(x[a:b], y[a:b], bidx[a:b])
                backward(piece_loss * ((b - a) / total))
                losses.append(piece_loss.detach() * ((b - a) / total))
                logit_parts.append(piece_logits.detach())
                per_parts.append(piece_per.detach())
        except Exception as exc:  # noqa: BLE001
            if is_oom(exc):
                raise oom_error(device, bounds[0][1], "the batch size (batch_size, --batch-size)") from None
            raise
        return torch.stack(losses).sum(), torch.cat(logit_parts), torch.cat(per_parts)

    chunks = 1
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_model.train()
        ascent = hooks.ascending(epoch)  # read by objective()
        if hooks.on_epoch_start is not None:
            hooks.on_epoch_start(epoch, model)
        perm = torch.randperm(n, generator=perm_gen)
        if world > 1:
            perm = perm[rank::world][:n_local]
        perm = perm.to(device)
        loss_sum = torch.zeros((), device=device)
        obj_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step, (a, b) in enumerate(batches):
            idx = perm[a:b]
            xb, yb = data[idx], targets[idx]
            if cfg.augment.active:
                xb = augment_batch(xb, cfg.augment, generator=aug_gen)
            x = to_float(xb)
            if not channels_last:
                x = x.contiguous()
            if hooks.transform is not None:
                x = hooks.transform(x, yb, idx)
            y, bidx, n_main = yb, idx, len(yb)
            if hooks.extra_batch is not None:
                extra = hooks.extra_batch(epoch, step)
                if extra is not None:
                    ex, ey = _extra_rows(extra, device, cfg, aug_gen, channels_last)
                    x = torch.cat([x, ex.to(x.dtype)])
                    y = torch.cat([yb, ey])
                    bidx = torch.cat([idx, torch.full((len(ey),), -1, device=device, dtype=idx.dtype)])
            if chunks == 1:
                try:
                    loss, logits, per = train_step(x, y, bidx, 1)
                except Exception as exc:  # noqa: BLE001  (only an out-of-memory error is retried)
                    if not is_oom(exc):
                        raise
                    chunks = 2  # from here on, every batch in two halves (same gradient)
                    empty_cache(device)
                    import warnings

                    warnings.warn(f"out of memory on {device} at batch size {len(y)}: each batch now runs "
                                  "as two halves with their gradients summed", RuntimeWarning, stacklevel=2)
                    loss, logits, per = train_step(x, y, bidx, chunks)
            else:
                loss, logits, per = train_step(x, y, bidx, chunks)
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if hooks.after_step is not None:
                hooks.after_step(model)
            with torch.no_grad():
                loss_sum += per[:n_main].detach().sum()
                obj_sum += loss.detach() * n_main
                correct += (logits[:n_main].argmax(1) == yb).sum()
            seen += n_main
        synchronize(device)
        if dist is not None:  # the epoch's numbers over every process's rows
            loss_sum, obj_sum, correct, seen = dist.total(
                torch.stack([loss_sum, obj_sum, correct.to(loss_sum.dtype),
                             torch.tensor(float(seen), device=device)])).unbind()
            seen = int(round(float(seen)))
        record = {
            "epoch": epoch,
            "loss": float(loss_sum) / max(1, seen),
            "objective": float(obj_sum) / max(1, seen),
            "acc": float(correct) / max(1, seen),
            "lr": float(optimizer.param_groups[0]["lr"]),
            "seconds": time.perf_counter() - t0,
        }
        record.update(_monitored(model, device))
        history.append(record)
        if log is not None:
            log(record)
        stop = bool(hooks.on_epoch_end is not None and hooks.on_epoch_end(epoch, model))
        if identity is not None:
            _save_checkpoint(checkpoint, {
                "identity": identity, "epoch": epoch, "stopped": stop, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "perm_gen": perm_gen.get_state(), "aug_gen": aug_gen.get_state().cpu(), "rng": torch.get_rng_state(),
                "history": history, "extra": checkpoint.state() if checkpoint.state is not None else None})
        if stop:
            break
    if identity is not None and checkpoint.remove_when_done:
        from pathlib import Path

        Path(checkpoint.path).unlink(missing_ok=True)
    model.eval()
    return TrainResult(model=model, history=history, seconds=time.perf_counter() - t_start)


# --------------------------------------------------------------------------- inference


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 1024, *,
                   device: str | torch.device | None = None, amp: Any = "auto",
                   tta_flip: bool = False) -> np.ndarray:
    """Logits (N, K) float32 in eval mode, no augmentation (``tta_flip`` averages with the
    mirrored image). ``device`` None = wherever the model is."""
    dev = _model_device(model) if device is None else resolve_device(device)
    sw = switches(dev, amp=amp, channels_last="auto", compile=False)
    sw.prepare(model)
    net = sw.compiled(model)
    was_training = model.training
    model.eval()
    data = pinned(as_uint8_tensor(images), dev)  # page-locked for asynchronous copies to a GPU

    def run(bs: int) -> list[torch.Tensor]:
        out = []
        for s in range(0, len(data), bs):
            x = sw.input(to_float(data[s:s + bs].to(dev, non_blocking=True)))
            with sw.autocast():
                logits = net(x).float()
                if tta_flip:
                    logits = 0.5 * (logits + net(x.flip(3)).float())
            out.append(logits.cpu())
        return out

    try:
        out = with_oom_retry(run, batch_size, option="the evaluation batch size (eval_batch_size)", device=dev)
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


@torch.no_grad()
def per_sample_loss(model: nn.Module, images: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray,
                    batch_size: int = 1024, *, device: str | torch.device | None = None,
                    amp: Any = False) -> np.ndarray:
    """Cross-entropy of each row against ``labels`` (eval mode, no augmentation, fp32 by
    default so that close losses still rank correctly)."""
    logits = torch.from_numpy(predict_logits(model, images, batch_size, device=device, amp=amp))
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    if len(logits) == 0:
        return np.zeros(0, dtype=np.float32)
    return F.cross_entropy(logits, y, reduction="none").numpy()
