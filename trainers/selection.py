"""Learned poisoning-sample selection: which rows an attacker poisons when it does not pick
them at random (``vetset poison --select lps|fus``; specs in docs/selection.md).

LPS (Zhu, Zhang, Wei, Shen, Fan, Wu, 2023, "Boosting Backdoor Attack with A Learnable Poisoning
Sample Selection Strategy") plays a min-max game over a surrogate model θ and a 0/1 poisoning
mask m with a fixed number of rows per class:

    min_θ max_m  Σ_i m_i ℓ(f_θ(g(x_i)), t) + (1 - m_i) ℓ(f_θ(x_i), y_i)

(g: the trigger, t: the target). For a fixed θ the inner maximum is closed-form: in each
class, the rows with the largest ℓ(f(g(x)), t) - ℓ(f(x), y), the poisoned copies the model
finds hardest to fit. So: start from a random mask, train the surrogate on the data the mask
poisons for ``epochs_per_round`` epochs (the same model, round after round), re-select, and
repeat ``rounds`` times; the last mask is the selection.

FUS (Xia, Li, Zhang, Li, IJCAI 2022, "Data-Efficient Backdoor Attacks"), filtering and updating:
start from a random pool of the budget's size; each iteration, train a fresh surrogate on the
poisoned data, count each poisoned row's forgetting events (an epoch in which its poisoned
copy was classified as the target followed by one in which it was not), keep the ``keep``
share of the pool with the most, refill the rest at random from the candidates not yet used;
``iterations`` times.

Both choose among :func:`pipelines.simulate.poison_candidates` (the non-target classes for a
dirty-label attack, the target class for a clean-label one) with an equal share per class,
and are seeded. Trainers never import cleansers; the loop is :func:`trainers.loop.fit`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Callable

import numpy as np
import torch

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError
from pipelines.simulate import (SimulationResult, SimulationSpec, make_attack, poison_budget, poison_candidates,
                                simulate)

from .accel import is_cuda, resolve_device
from .loop import TrainConfig, TrainHooks, fit, per_sample_loss, preset
from .models import build_model
from .train import auto_choice

Log = Callable[[str], Any] | None


@dataclass
class LPSConfig:
    """rounds x epochs_per_round: the surrogate's training (the paper's schedule was not
    available here; ours: 10 rounds of 1 epoch, i.e. one short training, chosen for cost).
    visible: see below (ours, not the paper's; 0 = as published).
    arch / preset "auto": the small CNN with ``cpu_small`` on the CPU, PreAct-ResNet18 with
    ``fast`` on CUDA (the paper's surrogate is a ResNet-18)."""

    rounds: int = 10
    epochs_per_round: int = 1
    arch: str = "auto"
    preset: str = "auto"
    batch_size: int | None = None
    crop: Any = "auto"  # random-crop augmentation: the preset's on CUDA, off on the CPU (as the detection model)
    # not in the paper: keep only candidates whose trigger changes the image at least as much as
    # this quantile of all candidates' changes (mean absolute pixel change); 0 = every candidate,
    # as published. Unguarded, the inner maximisation picks rows on which the trigger is
    # invisible (a white patch on an already white corner: 52% of its rows against 11% of all),
    # whose poisoned copy is "hard" only because it looks like the clean one; at 2% BadNets on
    # a CIFAR-10 slice that took the ASR from random's 0.68 to 0.07, the median guard to 0.81
    visible: float = 0.5


@dataclass
class FUSConfig:
    """iterations / keep: FUS's filtering-and-updating loop (the paper's 10 iterations at
    keep 0.5 cost 10 full trainings; ours: 3 iterations); epochs None = the preset's."""

    iterations: int = 3
    keep: float = 0.5
    epochs: int | None = None
    arch: str = "auto"
    preset: str = "auto"
    batch_size: int | None = None
    crop: Any = "auto"


CONFIGS = {"lps": LPSConfig, "fus": FUSConfig}


def make_selection_config(name: str, params: dict | None) -> Any:
    cls = CONFIGS.get(name)
    if cls is None:
        raise VetsetError(f"selection {name!r} has no options to learn; learned selections: {', '.join(CONFIGS)}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(params or {}) - names)
    if unknown:
        raise VetsetError(f"{name} has no option(s) {', '.join(unknown)}; options: {', '.join(sorted(names))}")
    cfg = cls(**(params or {}))
    if name == "lps" and (cfg.rounds < 1 or cfg.epochs_per_round < 1):
        raise VetsetError("lps: rounds and epochs_per_round must be >= 1")
    if name == "fus" and (cfg.iterations < 1 or not 0.0 < cfg.keep < 1.0):
        raise VetsetError("fus: iterations >= 1 and 0 < keep < 1 are required")
    return cfg


def per_class_quota(labels: np.ndarray, candidates: np.ndarray, k: int, rng: np.random.Generator) -> dict[int, int]:
    """How many of the ``k`` rows each candidate class gives: an equal share, the remainder to
    randomly drawn classes, a class short of candidates passing its excess on."""
    classes = np.unique(labels[candidates])
    avail = {int(c): int((labels[candidates] == c).sum()) for c in classes}
    quota = {c: 0 for c in avail}
    left = min(k, sum(avail.values()))
    while left > 0:
        open_ = [c for c in avail if quota[c] < avail[c]]
        share, extra = divmod(left, len(open_))
        lucky = set(rng.choice(open_, size=extra, replace=False).tolist()) if extra else set()
        for c in open_:
            add = min(share + (c in lucky), avail[c] - quota[c])
            quota[c] += add
            left -= add
    return quota


def top_per_class(scores: np.ndarray, labels: np.ndarray, candidates: np.ndarray, quota: dict[int, int]) -> np.ndarray:
    """The candidates with the largest ``scores`` (one per candidate) in each class, ``quota``
    rows of each."""
    out = []
    for c, q in quota.items():
        rows = np.flatnonzero(labels[candidates] == c)
        order = rows[np.argsort(-scores[rows], kind="stable")][:q]
        out.append(candidates[order])
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def random_per_class(labels: np.ndarray, candidates: np.ndarray, quota: dict[int, int],
                     rng: np.random.Generator) -> np.ndarray:
    return top_per_class(rng.random(len(candidates)), labels, candidates, quota)


class _Surrogate:
    """The surrogate model and what it trains on: the clean data with the selected rows
    replaced by their poisoned copies (and relabelled to the target for a dirty-label attack)."""

    def __init__(self, ds: ImageDataset, triggered: np.ndarray, candidates: np.ndarray, target: int,
                 clean_label: bool, arch: str, preset_name: str, batch_size: int | None, device, seed: int,
                 crop: Any = "auto"):
        self.ds, self.triggered, self.candidates = ds, triggered, candidates
        self.target, self.clean_label, self.seed = target, clean_label, seed
        self.device = resolve_device(device)
        auto_arch, auto_preset = auto_choice(self.device)
        self.arch = auto_arch if arch == "auto" else arch
        self.preset = auto_preset if preset_name == "auto" else preset_name
        self.batch_size = batch_size
        self.crop = is_cuda(self.device) if crop == "auto" else bool(crop)
        self.position = {int(r): i for i, r in enumerate(candidates)}

    def new_model(self, seed: int):
        return build_model(self.arch, self.ds.num_classes, self.ds.image_size, seed=seed)

    def config(self, epochs: int, seed: int) -> TrainConfig:
        over: dict[str, Any] = {"epochs": int(epochs), "device": str(self.device), "seed": int(seed)}
        if self.batch_size:
            over["batch_size"] = int(self.batch_size)
        cfg = preset(self.preset, **over)
        if not self.crop:
            cfg.augment = replace(cfg.augment, crop=False)
        return cfg

    def poisoned_data(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self.ds.images.copy(), self.ds.labels.copy()
        pos = np.array([self.position[int(r)] for r in rows], dtype=np.int64)
        if len(rows):
            images[rows] = self.triggered[pos]
            if not self.clean_label:
                labels[rows] = self.target
        return images, labels


def _lps(sur: _Surrogate, quota: dict[int, int], cfg: LPSConfig, rng, log: Log) -> tuple[np.ndarray, dict]:
    ds, cand = sur.ds, sur.candidates
    change = np.abs(sur.triggered.astype(np.float32) - ds.images[cand].astype(np.float32)).mean(axis=(1, 2, 3))
    eligible = np.ones(len(cand), bool)
    if cfg.visible > 0:
        eligible = change >= np.quantile(change, cfg.visible)
        for c, q in quota.items():  # never fewer eligible rows than a class's quota
            mine = np.flatnonzero(ds.labels[cand] == c)
            if eligible[mine].sum() < q:
                eligible[mine[np.argsort(-change[mine], kind="stable")[:q]]] = True
    rows = random_per_class(ds.labels, cand[eligible], quota, rng)
    model = sur.new_model(sur.seed)
    clean_images = ds.images[cand]
    target = np.full(len(cand), sur.target, dtype=np.int64)
    changed = []
    for r in range(cfg.rounds):
        images, labels = sur.poisoned_data(rows)
        fit(model, images, labels, sur.config(cfg.epochs_per_round, sur.seed * 1000 + r))
        hard = (per_sample_loss(model, sur.triggered, target, device=sur.device)
                - per_sample_loss(model, clean_images, ds.labels[cand], device=sur.device))
        hard[~eligible] = -np.inf
        new = top_per_class(hard, ds.labels, cand, quota)
        changed.append(int(len(np.setdiff1d(new, rows))))
        rows = new
        if log:
            log(f"lps round {r + 1}/{cfg.rounds}: {changed[-1]} of {len(rows)} rows changed")
    chosen = np.isin(cand, rows)
    return rows, {"rows_changed_per_round": changed,
                  "trigger_change_selected": round(float(change[chosen].mean()), 3) if chosen.any() else None,
                  "trigger_change_all": round(float(change.mean()), 3)}


class _Correct:
    """A ``TrainHooks.loss_fn`` recording, per epoch, whether each row was classified as its
    (training) label in the batch it was trained in."""

    def __init__(self, epochs: int, n: int, device):
        self.correct = torch.zeros((max(1, epochs), n), dtype=torch.int8, device=device)
        self.seen = torch.zeros((max(1, epochs), n), dtype=torch.bool, device=device)
        self.epoch = 0

    def on_epoch_start(self, epoch: int, model) -> None:
        self.epoch = epoch

    def __call__(self, per_sample, logits, labels, batch_idx):
        with torch.no_grad():
            keep = batch_idx >= 0
            idx = batch_idx[keep]
            self.correct[self.epoch, idx] = (logits.detach().argmax(1) == labels)[keep].to(torch.int8)
            self.seen[self.epoch, idx] = True
        return per_sample.mean()

    def forgetting(self, rows: np.ndarray) -> np.ndarray:
        """Forgetting events of ``rows``: correct in one epoch, wrong in the next."""
        c = self.correct[:, torch.as_tensor(rows, device=self.correct.device)].cpu().numpy().astype(bool)
        return (c[:-1] & ~c[1:]).sum(0) if len(c) > 1 else np.zeros(len(rows), int)


def _fus(sur: _Surrogate, quota: dict[int, int], cfg: FUSConfig, rng, log: Log) -> tuple[np.ndarray, dict]:
    ds, cand = sur.ds, sur.candidates
    rows = random_per_class(ds.labels, cand, quota, rng)
    events_mean = []
    for it in range(cfg.iterations):
        images, labels = sur.poisoned_data(rows)
        tc = sur.config(cfg.epochs or preset(sur.preset).epochs, sur.seed * 1000 + it)
        rec = _Correct(tc.epochs, len(ds), sur.device)
        fit(sur.new_model(sur.seed + 7 * it), images, labels, tc,
            TrainHooks(loss_fn=rec, on_epoch_start=rec.on_epoch_start))
        events = rec.forgetting(rows)
        events_mean.append(float(events.mean()) if len(events) else 0.0)
        if it == cfg.iterations - 1:
            break
        # keep the most-forgotten share of each class's rows, refill the rest at random
        kept = []
        for c in quota:
            mine = np.flatnonzero(ds.labels[rows] == c)
            order = mine[np.argsort(-events[mine] + rng.random(len(mine)) * 1e-3, kind="stable")]
            kept.append(rows[order[:int(round(cfg.keep * len(mine)))]])
        kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
        unused = np.setdiff1d(cand, rows)
        refill_quota = {c: quota[c] - int((ds.labels[kept] == c).sum()) for c in quota}
        refill = random_per_class(ds.labels, unused, refill_quota, rng)
        rows = np.sort(np.concatenate([kept, refill]))
        if log:
            log(f"fus iteration {it + 1}/{cfg.iterations}: mean forgetting events {events_mean[-1]:.2f}")
    return rows, {"mean_forgetting_events": events_mean}


def select_poison_rows(ds: ImageDataset, spec: SimulationSpec, *, device: Any = "auto",
                       log: Log = None) -> tuple[np.ndarray, dict]:
    """The rows ``spec.select`` (lps or fus) poisons in ``ds`` for ``spec.attack`` at
    ``spec.poison_rate``, and what it did (seconds, per-round figures)."""
    if not spec.attack:
        raise VetsetError("a poisoning-sample selection needs an attack (--attack)")
    cfg = make_selection_config(spec.select, spec.select_params)
    attack = make_attack(ds, spec)
    candidates = poison_candidates(ds, attack, learned=True)
    k = min(poison_budget(spec, len(ds)), len(candidates))
    rng = np.random.default_rng([spec.seed, 13])
    quota = per_class_quota(ds.labels, candidates, k, rng)
    sur = _Surrogate(ds, attack.apply(ds.images[candidates]), candidates, attack.target, attack.clean_label,
                     cfg.arch, cfg.preset, cfg.batch_size, device, spec.seed, cfg.crop)
    t0 = time.perf_counter()
    rows, info = (_lps if spec.select == "lps" else _fus)(sur, quota, cfg, rng, log)
    info = {"selection": spec.select, "config": asdict(cfg), "surrogate": sur.arch, "preset": sur.preset,
            "device": str(sur.device), "seconds": round(time.perf_counter() - t0, 2),
            "rows_per_class": {str(c): q for c, q in quota.items()}, **info}
    return rows, info


def simulate_selected(ds: ImageDataset, spec: SimulationSpec, *, device: Any = "auto",
                      log: Log = None) -> SimulationResult:
    """:func:`pipelines.simulate.simulate` with the poisoned rows chosen by ``spec.select``
    (random needs no training and goes straight to ``simulate``)."""
    if spec.select == "random" or not spec.attack:
        return simulate(ds, spec)
    rows, info = select_poison_rows(ds, spec, device=device, log=log)
    result = simulate(ds, spec, poison_rows=rows)
    result.counts["selection_info"] = info
    return result
