"""PDB, proactive defensive backdoor (Wei et al., "Mitigating Backdoor Attack by Injecting
Proactive Defensive Backdoor", NeurIPS 2024).

The defender plants a backdoor of its own that dominates the attacker's: a 7x7 square in the
top-left corner set to 2.0 in [0, 1] pixel space (a value no real image, hence no attacker,
can carry), with the reversible label map h(y) = (y + 1) mod K. Defensive rows (a
class-balanced 10% of the untrusted rows, each repeated 5 times per epoch) get the trigger
and the label h(y) and are appended to every batch through ``TrainHooks.extra_batch``, with
their own augmentation: brightness x * (0.5 + 0.5u) with p 0.2, rotation up to 10 degrees
with p 0.5, then crop + flip; the trigger is stamped after augmentation. At inference the
trigger is always added and the logits un-permuted: the saved model carries the ``pdb``
wrapper (:class:`trainers.saved.DefensiveTrigger`), so ``trainers.load_model`` returns a
model that is safe as it is.

The defensive rows are drawn from the untrusted data (the authors' code drew them from
clean copies, which a real user does not have). A poisoned row drawn as a defensive row
teaches "attack trigger + defensive trigger -> h(target)", which the wrapper maps back to
the attacker's target: at 10% poisoning about half of the target class is poisoned, so a
class-balanced draw picks ~5% of its defensive rows from them. Given an audit's scores table
(``scores``: ``vetset train --defense pdb --scores scores.parquet``), flagged rows are never
drawn; every row still trains as usual.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import crop_flip, to_float
from ..loop import TrainHooks, _batches, fit, resolve_device
from ..saved import DefensiveTrigger, pdb_trigger_slices
from .base import DEFENSES, Defense, epoch_logger, new_model, readable, staged
from .curate import flagged_mask


def defensive_rows(labels: np.ndarray, num_classes: int, ratio: float, seed: int,
                   allowed: np.ndarray | None = None) -> np.ndarray:
    """A class-balanced draw of ``round(ratio * N)`` row indices: the same count from every
    class (the remainder to the first classes), capped at each class's size, and taken only
    from rows where ``allowed`` (bool per row) is True when it is given."""
    labels = np.asarray(labels)
    total = int(round(ratio * len(labels)))
    ok = np.ones(len(labels), dtype=bool) if allowed is None else np.asarray(allowed, dtype=bool)
    rng = np.random.default_rng([seed, 31])
    base, extra = divmod(total, num_classes)
    picks = []
    for k in range(num_classes):
        rows = np.flatnonzero((labels == k) & ok)
        want = min(len(rows), base + (1 if k < extra else 0))
        picks.append(rng.choice(rows, size=want, replace=False) if want else rows[:0])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def stamp_defensive_trigger(x: torch.Tensor, value: float = 2.0, size: int = 7, corner: str = "top_left") -> torch.Tensor:
    """Float NCHW batch with the defensive square set to ``value`` (a new tensor)."""
    rows, cols = pdb_trigger_slices(x.shape[-2], x.shape[-1], size, corner)
    x = x.clone()
    x[..., rows, cols] = value
    return x


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of a float NCHW batch by its angle (bilinear, zero fill)."""
    theta = degrees * (math.pi / 180.0)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(mat.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@DEFENSES.register("pdb")
class PDBDefense(Defense):
    name = "pdb"

    @dataclass
    class Config:
        """Defaults (the paper and its code, specs/defenses.md):

        trigger_value 2.0, trigger_size 7, corner "top_left": the defensive trigger.
        shift 1: h(y) = (y + shift) mod K.
        defense_ratio 0.1: a class-balanced 10% of the training rows; repeats 5 per epoch.
        brightness_p 0.2 (x * (0.5 + 0.5u)), rotation_deg 10 with rotation_p 0.5, then the
            main recipe's crop + flip: the defensive rows' augmentation.
        scores: an audit's scores table (path or DataFrame, as for ``curate``) whose flagged
            rows are never drawn as defensive rows (ours; None = draw from every row).
        The main recipe is the given TrainConfig (the paper: 100 epochs, SGD lr 0.01, cosine,
        batch 256, plain cross-entropy; the "fast" preset on a GPU).
        """

        trigger_value: float = 2.0
        trigger_size: int = 7
        corner: str = "top_left"
        shift: int = 1
        defense_ratio: float = 0.1
        repeats: int = 5
        brightness_p: float = 0.2
        rotation_deg: float = 10.0
        rotation_p: float = 0.5
        scores: Any = None

    def wrapper_spec(self, num_classes: int) -> dict:
        c = self.config
        return {"name": "pdb", "params": {"num_classes": int(num_classes), "value": float(c.trigger_value),
                                          "size": int(c.trigger_size), "corner": c.corner, "shift": int(c.shift)}}

    def augment_defensive(self, x_u8: torch.Tensor, cfg, gen: torch.Generator) -> torch.Tensor:
        """uint8 NHWC defensive rows -> float NCHW, augmented, with the defensive trigger."""
        c = self.config
        x = to_float(x_u8).contiguous()
        n, dev = len(x), x.device
        if c.brightness_p > 0:
            u = torch.rand(n, generator=gen, device=dev)
            on = torch.rand(n, generator=gen, device=dev) < c.brightness_p
            x = x * torch.where(on, 0.5 + 0.5 * u, torch.ones_like(u))[:, None, None, None]
        if c.rotation_p > 0 and c.rotation_deg > 0:
            deg = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * c.rotation_deg
            on = torch.rand(n, generator=gen, device=dev) < c.rotation_p
            x = _rotate(x, torch.where(on, deg, torch.zeros_like(deg)))
        a = cfg.augment
        x = crop_flip(x, pad=a.pad, pad_mode=a.pad_mode, flip=a.flip, crop=a.crop, generator=gen, layout="NCHW")
        return stamp_defensive_trigger(x, c.trigger_value, c.trigger_size, c.corner)

    def train(self, ds, cfg, *, model_name, device="auto", seed=0, log=None, pretrained=None):
        c = self.config
        ds = readable(ds)
        t0 = time.perf_counter()
        cfg = cfg.replace(device=device, seed=seed)
        dev = resolve_device(cfg.device)
        k = ds.num_classes
        model = new_model(ds, model_name, seed, pretrained)

        allowed = None if c.scores is None else ~flagged_mask(ds, c.scores)
        defense_idx = defensive_rows(ds.labels, k, c.defense_ratio, seed, allowed)
        def_images = torch.from_numpy(np.ascontiguousarray(ds.images[defense_idx])).to(dev)
        def_labels = torch.from_numpy((ds.labels[defense_idx] + c.shift) % k).to(dev)
        steps = max(1, len(_batches(len(ds), cfg.batch_size)))
        order_gen = np.random.default_rng([seed, 32])
        aug_gen = torch.Generator(device=dev).manual_seed(seed * 1000 + 33)
        chunks: dict[int, list[np.ndarray]] = {}

        def extra_batch(epoch: int, step: int):
            if len(defense_idx) == 0 or c.repeats <= 0:
                return None
            if epoch not in chunks:  # every defensive row ``repeats`` times per epoch, shuffled
                chunks.clear()
                order = np.concatenate([order_gen.permutation(len(defense_idx)) for _ in range(c.repeats)])
                chunks[epoch] = np.array_split(order, steps)
            part = chunks[epoch][step] if step < len(chunks[epoch]) else np.zeros(0, dtype=np.int64)
            if len(part) == 0:
                return None
            sel = torch.from_numpy(part).to(dev)
            return self.augment_defensive(def_images[sel], cfg, aug_gen), def_labels[sel]

        result = fit(model, ds.images, ds.labels, cfg, hooks=TrainHooks(extra_batch=extra_batch),
                     log=epoch_logger(log, "pdb", cfg.epochs))
        spec = self.wrapper_spec(k)
        wrapped = DefensiveTrigger(result.model, **spec["params"]).eval()
        return wrapped, {
            "history": staged("pdb", result),
            "train_seconds": time.perf_counter() - t0,
            "n_train": int(len(ds)),
            "n_defensive": int(len(defense_idx)),
            "n_excluded_from_defensive": 0 if allowed is None else int((~allowed).sum()),
            "defensive_rows_per_epoch": int(len(defense_idx) * c.repeats),
            "wrapper": spec,
        }
