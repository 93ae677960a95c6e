"""The model trained on the (untrusted) data for detection, shared by the detectors of one
audit, plus what they read from it (logits, penultimate features, activation gradients) and
the k-fold out-of-sample probabilities that confident learning needs.

Everything is cached in ``AuditContext.model_cache`` under a key made of the dataset
fingerprint and the model/training config, so AGPD, spectral signatures, activation
clustering (one model) and confident learning (k fold models) train once per audit:

    ("model", fingerprint, spec_key)            -> DetectionModel
    ("model", fingerprint, spec_key, "logits")  -> np.ndarray (N, K)
    ("model", fingerprint, spec_key, "features")-> np.ndarray (N, D)
    ("oof", fingerprint, spec_key, folds)       -> OutOfSample

Defaults ("auto"): PreAct-ResNet18 with the fast GPU recipe (``trainers.loop.preset("fast")``,
30 epochs, 91.2% clean accuracy on the shared CIFAR-10) on CUDA, as in the AGPD paper's
setting; the small CNN with the ``cpu_small`` preset (10 epochs) on the CPU, which is what
fits a 2-core machine (../shared/ENVIRONMENT.md).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pipelines.dataset import ImageDataset
from trainers.augment import to_float

if TYPE_CHECKING:
    from trainers.loop import Checkpoint
from trainers.accel import Never, is_cuda, switches
from trainers.loop import TrainConfig, TrainHooks, fit, predict_logits, preset, resolve_device
from trainers.models import build_model, penultimate_features

from .base import AuditContext


@dataclass(frozen=True)
class ModelSpec:
    """Which model to train for detection and how. "auto"/None fields resolve by device
    (see the module docstring). ``overrides`` are TrainConfig fields, as a tuple of pairs so
    that the spec stays hashable (e.g. ``(("lr", 0.05),)``)."""

    arch: str = "auto"
    preset: str = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    compile: Any = "auto"  # True on CUDA, False on the CPU
    crop: Any = "auto"  # random-crop augmentation: the preset's on CUDA, off on the CPU (see below)
    overrides: tuple = ()

    @classmethod
    def from_options(cls, arch: str = "auto", epochs: int | None = None, **kw: Any) -> "ModelSpec":
        return cls(arch=arch, epochs=epochs, **kw)

    def resolve(self, device: torch.device) -> "ModelSpec":
        cuda = is_cuda(device)
        return ModelSpec(
            arch=("preact_resnet18" if cuda else "small_cnn") if self.arch == "auto" else self.arch,
            preset=("fast" if cuda else "cpu_small") if self.preset == "auto" else self.preset,
            epochs=self.epochs, batch_size=self.batch_size,
            compile=cuda if self.compile == "auto" else bool(self.compile),
            crop=cuda if self.crop == "auto" else bool(self.crop),
            overrides=tuple(self.overrides),
        )

    def train_config(self, device: torch.device, seed: int) -> TrainConfig:
        over: dict[str, Any] = dict(self.overrides)
        if self.epochs is not None:
            over["epochs"] = int(self.epochs)
        if self.batch_size is not None:
            over["batch_size"] = int(self.batch_size)
        over.update(device=str(device), compile=bool(self.compile), seed=int(seed))
        cfg = preset(self.preset, **over)
        if not self.crop:
            cfg.augment = replace(cfg.augment, crop=False)
        return cfg

    def key(self) -> tuple:
        return tuple(sorted(asdict(self).items(), key=lambda kv: kv[0]))


@dataclass
class DetectionModel:
    model: nn.Module
    spec: ModelSpec
    device: torch.device
    train_seconds: float
    history: list[dict] = field(default_factory=list)
    trained_now: bool = True  # False when it came from the cache
    # training dynamics: (epochs, N) float32, each row's margin (logit of its label minus the
    # largest other logit) on its augmented copy in the batch it was trained in, per epoch
    # (AUM, Pleiss et al. 2020, is the mean over epochs); NaN where a row was not seen
    margins: np.ndarray | None = None

    def describe(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {"arch": self.spec.arch, "preset": self.spec.preset, "epochs": len(self.history),
                "train_seconds": round(self.train_seconds, 3), "trained_now": self.trained_now,
                "final_train_acc": last.get("acc")}


def _device(ctx: AuditContext) -> torch.device:
    return resolve_device(ctx.device)


class MarginRecorder:
    """A ``TrainHooks.loss_fn`` that keeps the loop's loss (the batch mean) and records each
    row's training margin per epoch, on the device (no host sync per step)."""

    def __init__(self, epochs: int, n: int, device: torch.device):
        self.margins = torch.full((max(epochs, 1), n), float("nan"), device=device)
        self.epoch = 0

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        self.epoch = epoch

    def __call__(self, per_sample: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                 batch_idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lg = logits.detach().float()
            own = lg.gather(1, labels[:, None]).squeeze(1)
            other = lg.scatter(1, labels[:, None], float("-inf")).max(1).values
            keep = batch_idx >= 0
            self.margins[self.epoch, batch_idx[keep]] = (own - other)[keep]
        return per_sample.mean()

    def result(self, epochs_run: int) -> np.ndarray:
        return self.margins[:epochs_run].cpu().numpy().astype(np.float32)

    def state(self) -> dict:
        return {"margins": self.margins.cpu()}

    def restore(self, state: dict) -> None:
        self.margins.copy_(state["margins"].to(self.margins.device))


def checkpoint_for(ctx_dir: str | None, *parts) -> Checkpoint | None:
    """The checkpoint file of one training run under ``ctx_dir`` (None = no checkpoint)."""
    if not ctx_dir:
        return None
    import hashlib
    from pathlib import Path

    from trainers.loop import Checkpoint

    name = hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest()
    return Checkpoint(Path(ctx_dir) / f"{name}.pt")


def train_model(images: np.ndarray, labels: np.ndarray, num_classes: int, spec: ModelSpec,
                device: torch.device, seed: int, record_margins: bool = False, checkpoint=None
                ) -> tuple[nn.Module, list[dict], float, np.ndarray | None]:
    """Train the detection model; with ``record_margins`` also return the (epochs, N)
    training margins (see :class:`DetectionModel`). ``checkpoint``: a
    :class:`trainers.loop.Checkpoint` to resume from and save to each epoch."""
    size = images.shape[1:3]
    model = build_model(spec.arch, num_classes, size, seed=seed)
    cfg = spec.train_config(device, seed)
    hooks = None
    recorder = None
    if record_margins:
        recorder = MarginRecorder(cfg.epochs, len(images), resolve_device(cfg.device))
        hooks = TrainHooks(loss_fn=recorder, on_epoch_start=recorder.on_epoch_start)
        if checkpoint is not None:
            checkpoint.state, checkpoint.restore = recorder.state, recorder.restore
    result = fit(model, images, labels, cfg, hooks, checkpoint=checkpoint)
    margins = recorder.result(len(result.history)) if recorder is not None else None
    return result.model, result.history, result.seconds, margins


def get_detection_model(ds: ImageDataset, ctx: AuditContext, spec: ModelSpec | None = None) -> DetectionModel:
    """The model trained on ``ds`` for detection: from ``ctx.model_cache`` when an earlier
    detector of this audit trained it, else trained now and cached."""
    device = _device(ctx)
    spec = (spec or ModelSpec()).resolve(device)
    key = ("model", ds.fingerprint, spec.key(), ctx.seed)
    cached = ctx.model_cache.get(key)
    if cached is not None:
        return DetectionModel(cached.model, cached.spec, cached.device, cached.train_seconds,
                              cached.history, trained_now=False, margins=cached.margins)
    model, history, seconds, margins = train_model(
        ds.images, ds.labels, ds.num_classes, spec, device, ctx.seed, record_margins=True,
        checkpoint=checkpoint_for(ctx.checkpoint_dir, "detection", ds.fingerprint, spec.key(), ctx.seed))
    model.eval()
    entry = DetectionModel(model, spec, device, seconds, history, trained_now=True, margins=margins)
    ctx.model_cache[key] = entry
    return entry


def _cached(ctx: AuditContext, key: tuple, compute):
    if key not in ctx.model_cache:
        ctx.model_cache[key] = compute()
    return ctx.model_cache[key]


def _dm_key(ds: ImageDataset, dm: DetectionModel, ctx: AuditContext) -> tuple:
    return ("model", ds.fingerprint, dm.spec.key(), ctx.seed)


def model_logits(ds: ImageDataset, dm: DetectionModel, ctx: AuditContext) -> np.ndarray:
    """Eval-mode logits of every row (cached per detection model)."""
    return _cached(ctx, _dm_key(ds, dm, ctx) + ("logits",),
                   lambda: predict_logits(dm.model, ds.images, device=dm.device, amp=False))


@torch.no_grad()
def features_of(model: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    """Penultimate features (N, D), eval mode, fp32."""
    model.eval().to(device)
    data = torch.from_numpy(np.ascontiguousarray(images))
    out = []
    for s in range(0, len(data), batch_size):
        x = to_float(data[s:s + batch_size].to(device))
        out.append(penultimate_features(model, x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def model_features(ds: ImageDataset, dm: DetectionModel, ctx: AuditContext) -> np.ndarray:
    return _cached(ctx, _dm_key(ds, dm, ctx) + ("features",), lambda: features_of(dm.model, ds.images, dm.device))


# --------------------------------------------------------------------------- AGPD's gradients


def main_path_convs(model: nn.Module, include_stem: bool = False) -> list[tuple[str, nn.Conv2d]]:
    """The convolutions on the main path of ``model`` (every ``nn.Conv2d`` not in a residual
    shortcut/downsample branch), in forward order. The stem (the first conv, which reads the
    image itself) is left out unless ``include_stem``: that gives exactly the 16 block convs
    of PreAct-ResNet18 that AGPD uses (specs/detectors.md), and conv2..conv4 of the small CNN."""
    net = getattr(model, "net", model)
    convs = [(name, m) for name, m in net.named_modules()
             if isinstance(m, nn.Conv2d) and "shortcut" not in name and "downsample" not in name]
    if not include_stem and len(convs) > 1:
        convs = convs[1:]
    return convs


def activation_gradients(model: nn.Module, images: np.ndarray, labels: np.ndarray, layers: list[nn.Module],
                         device: torch.device, batch_size: int = 256) -> list[torch.Tensor]:
    """Per row and layer: the spatial mean of d logit_y / d activation (one value per
    channel, the Grad-CAM weights), with y the row's label. One forward and one backward per
    batch: the rows of a batch are independent in eval mode, so the gradient of the sum of
    the batch's label logits w.r.t. a layer's output holds every row's own gradient.
    Returns one float32 tensor (N, C_l) per layer, on ``device``.

    fp32 by default (the gradients' directions are compared by cosine); bf16 autocast and
    channels_last when forced (:mod:`trainers.accel`). Never compiled: the gradients are
    taken with respect to intermediate activations caught by forward hooks, which a compiled
    graph neither runs hooks for nor exposes as autograd inputs."""
    sw = switches(device, amp=False, channels_last="auto",
                  compile=Never("gradients w.r.t. hooked intermediate activations"))
    model.eval()
    sw.prepare(model)
    captured: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in layers]
    data = torch.from_numpy(np.ascontiguousarray(images))
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    outs: list[list[torch.Tensor]] = [[] for _ in layers]
    try:
        for s in range(0, len(data), batch_size):
            captured.clear()
            x = sw.input(to_float(data[s:s + batch_size].to(device)))
            y = y_all[s:s + batch_size].to(device)
            with torch.enable_grad():
                with sw.autocast():
                    logits = model(x)
                target = logits.float().gather(1, y[:, None]).sum()
                grads = torch.autograd.grad(target, captured[:len(layers)])
            for j, g in enumerate(grads):
                outs[j].append(g.float().mean(dim=(2, 3)))
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(o) if o else torch.zeros(0, device=device) for o in outs]


# --------------------------------------------------------------------------- out-of-sample probabilities


@dataclass
class OutOfSample:
    probs: np.ndarray  # (N, K), each row predicted by the fold model that did not see it
    fold: np.ndarray  # (N,) fold index of each row
    seconds: float
    trained_now: bool = True


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per row, each class spread evenly over the k folds."""
    rng = np.random.default_rng([seed, 40])
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = (np.arange(len(rows)) + offset) % k
        offset += len(rows)
    return fold


def out_of_sample_probs(ds: ImageDataset, ctx: AuditContext, spec: ModelSpec, folds: int) -> OutOfSample:
    """k-fold cross-validated softmax probabilities (the input confident learning wants):
    k fresh models, each trained on k-1 folds and predicting the fold it did not see.
    Cached per (fingerprint, spec, k, seed)."""
    device = _device(ctx)
    spec = spec.resolve(device)
    key = ("oof", ds.fingerprint, spec.key(), int(folds), ctx.seed)
    if key in ctx.model_cache:
        o = ctx.model_cache[key]
        return OutOfSample(o.probs, o.fold, o.seconds, trained_now=False)
    start = time.perf_counter()
    fold = stratified_folds(ds.labels, folds, ctx.seed)
    probs = np.zeros((len(ds), ds.num_classes), dtype=np.float64)
    for f in range(folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        model, _, _, _ = train_model(ds.images[train], ds.labels[train], ds.num_classes, spec, device,
                                     ctx.seed + 101 * (f + 1),
                                     checkpoint=checkpoint_for(ctx.checkpoint_dir, "fold", ds.fingerprint, spec.key(),
                                                               ctx.seed, folds, f))
        logits = torch.from_numpy(predict_logits(model, ds.images[test], device=device, amp=False))
        probs[test] = torch.softmax(logits.double(), dim=1).numpy()
        del model
    out = OutOfSample(probs, fold, time.perf_counter() - start, trained_now=True)
    ctx.model_cache[key] = out
    return out


def reference_rows(ds: ImageDataset, logits: np.ndarray, n_per_class: int, quantile: float) -> dict[int, np.ndarray]:
    """Clean stand-ins when no trusted set is given: per class, among the rows the model
    classifies as their label, the ``n_per_class`` rows whose confidence is nearest the
    class's ``quantile`` of confidence.

    Why not the most confident rows: in a poisoned target class the trigger rows are the
    most confidently classified of all (the trigger is a shortcut), so "most confident"
    picks poisoned rows as the clean reference and AGPD then flags the clean half. A low
    quantile (0.25 by default) sits inside the clean part of the class as long as poisoned
    rows are fewer than ~75% of it (10% poisoning of CIFAR-10 puts ~53% in the target
    class). ``quantile=1.0`` gives "most confident" (kept for measuring that choice).
    Limit, measured: once the model is confident on nearly every row the quantile no longer
    separates the two halves, and on digits (10% BadNets, detection model at 12-20 epochs)
    the reference sat among the poisoned rows in 3 of 10 runs, so AGPD flagged the clean
    half; a trusted set never did (docs/benchmarks.md, "AGPD's clean reference")."""
    pred = logits.argmax(1)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    conf = p[np.arange(len(p)), ds.labels]
    out: dict[int, np.ndarray] = {}
    for c in range(ds.num_classes):
        rows = np.flatnonzero((ds.labels == c) & (pred == c))
        if len(rows) == 0:
            rows = np.flatnonzero(ds.labels == c)
        if len(rows) == 0:
            out[c] = rows
            continue
        q = np.quantile(conf[rows], quantile)
        order = np.argsort(np.abs(conf[rows] - q), kind="stable")
        out[c] = np.sort(rows[order[:n_per_class]])
    return out


def trusted_reference(trusted: ImageDataset, dm: DetectionModel, n_per_class: int) -> tuple[ImageDataset, dict[int, np.ndarray]]:
    """The trusted rows the model classifies correctly (as the AGPD authors' code keeps
    them), at most ``n_per_class`` per class: (trusted set, {class: row indices})."""
    logits = predict_logits(dm.model, trusted.images, device=dm.device, amp=False)
    ok = logits.argmax(1) == trusted.labels
    out = {}
    for c in range(trusted.num_classes):
        rows = np.flatnonzero(ok & (trusted.labels == c))
        out[c] = rows[:n_per_class]
    return trusted, out


def reference_probabilities(ds: ImageDataset, device: str = "auto", seed: int = 12345, folds: int = 3,
                            epochs: int | None = None) -> np.ndarray:
    """A reference model's out-of-sample class probabilities for every row of a clean
    dataset (``folds`` fold models of the shared detection recipe): what instance-dependent
    label noise draws its flips from (``vetset poison --noise instance``)."""
    ctx = AuditContext(device=device, seed=seed)
    return out_of_sample_probs(ds, ctx, ModelSpec(epochs=epochs), folds).probs
