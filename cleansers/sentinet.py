"""SentiNet-style localized-trigger test (after Chou, Tramer & Pellegrino, "SentiNet:
Detecting Localized Universal Attacks Against Deep Learning Systems", IEEE S&P Workshops
2020), on the shared detection model.

A patch trigger (BadNets, a sticker, a watermark in a corner) is a small region that makes
the model predict the target class on ANY image. So, per row the model agrees with:

1. locate the region the prediction rests on: the ``window`` x ``window`` square whose
   occlusion (filled with the dataset's mean colour) lowers the probability of the row's
   label the most, among the ``top_k`` windows of a grid ``stride`` apart (edges included)
   with the most input-gradient saliency;
2. transplant that region, the row's own pixels, onto ``carriers`` images of OTHER classes
   that the model classifies correctly and confidently (rows of the dataset, drawn at
   random per row, seeded);
3. score = the fooled rate, the share of carriers the model now assigns to the row's label.

A clean row's most salient 8x8 region rarely moves another class's image to its label
(on the 6,000-row CIFAR-10 slice, 99.9% of clean rows scored <= 0.25), while a poisoned
row's region holds the trigger, which fools the model about as often as the attack succeeds.
Flag: score >= ``threshold`` (0.5: the region alone decides the prediction on most images of
other classes). Rows the model does not classify as their label score 0 (a trigger that
works makes the model agree with the target label). This is a specialist in the fusion: it
flags alone, and on clean data it flags (nearly) nothing.

Differences from the paper, which also fits a decision boundary on clean data with an
"inert pattern" test and proposes classes with segmentation: the region comes from
input-gradient saliency with occlusion of the ``top_k`` best windows (``locate="gradient"``,
the default: one backward pass plus ``top_k`` forwards per row) or from occluding every
window (``locate="occlusion"``: one forward per window, 6x slower on the CPU for the same
result on the 6,000-row CIFAR-10 slice, F1 0.913 both) rather than Grad-CAM, and the decision
is the fooled rate alone. Like the paper, it finds localized triggers only: blended, SIG and
WaNet triggers span the image and are AGPD's job.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError
from trainers.accel import switches
from trainers.augment import to_float

from .base import DETECTORS, AuditContext, Detector, DetectorResult
from .detection_model import ModelSpec, get_detection_model, model_logits

LOCATE = ("occlusion", "gradient")


@dataclass
class SentiNetConfig:
    """``window`` side of the square region as a fraction of the image's shorter side (0.25
    = 8 px on 32x32; a trigger up to that size fits in one window); ``stride`` between
    windows as a fraction of the window (0.5: every trigger of at most half a window lies
    wholly inside some window); ``carriers`` images per row; ``threshold`` on the fooled
    rate; ``min_confidence``: carriers are rows the model assigns to their own label with
    at least this probability. ``arch``/``epochs``: the shared detection model."""

    window: float = 0.25
    stride: float = 0.5
    locate: str = "gradient"
    top_k: int = 4
    carriers: int = 16
    threshold: float = 0.5
    min_confidence: float = 0.5
    batch_size: int = 512
    arch: str = "auto"
    epochs: int | None = None


def window_positions(height: int, width: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` windows ``stride`` apart, the last row/column flush with
    the image's edge (corner triggers are the common case)."""

    def axis(n: int) -> list[int]:
        starts = list(range(0, n - size + 1, stride))
        if starts[-1] != n - size:
            starts.append(n - size)
        return starts

    return [(r, c) for r in axis(height) for c in axis(width)]


def _window_masks(positions: list[tuple[int, int]], size: int, shape: tuple[int, int], device) -> torch.Tensor:
    """(P, 1, H, W) float masks, 1 inside each window."""
    masks = torch.zeros(len(positions), 1, *shape, device=device)
    for j, (r, c) in enumerate(positions):
        masks[j, :, r:r + size, c:c + size] = 1.0
    return masks


class _Probe:
    """The model in eval mode on batches of uint8 rows, returning probabilities."""

    def __init__(self, model, device: torch.device, images: np.ndarray):
        # bf16 autocast and channels_last on CUDA (or where forced); compiled where forced
        # (one probe forward serves many occlusion batches, but compiling it costs more than
        # it saves at the CPU's batch counts, so "auto" leaves it off)
        self.sw = switches(device, amp="auto", channels_last="auto", compile=False)
        self.device = self.sw.device
        self.model = self.sw.prepare(model.eval())
        self.net = self.sw.compiled(self.model)
        self.data = torch.from_numpy(np.ascontiguousarray(images))

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        return self.sw.input(to_float(self.data[torch.as_tensor(idx)].to(self.device)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with self.sw.autocast():
            return self.net(x).float()

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).softmax(1)


def _occlusion_drop(probe: _Probe, x: torch.Tensor, y: torch.Tensor, base: torch.Tensor, mask: torch.Tensor,
                    fill: torch.Tensor) -> torch.Tensor:
    """(B,): how much occluding ``mask`` (one (1, H, W) window for all rows, or (B, 1, H, W)
    one per row) lowers p(label)."""
    occluded = x * (1 - mask) + fill * mask
    return base - probe.probs(occluded)[torch.arange(len(x), device=x.device), y]


def _gradient_candidates(probe: _Probe, x: torch.Tensor, y: torch.Tensor, size: int,
                         positions: list[tuple[int, int]], fill: torch.Tensor, top_k: int) -> torch.Tensor:
    """(B, k) window indices with the most input-gradient x (input - fill) saliency."""
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        logp = probe.logits(xg).log_softmax(1).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(logp, xg)
    sal = (grad * (x - fill)).abs().sum(1, keepdim=True)
    pooled = F.avg_pool2d(sal, size, stride=1)  # every top-left corner
    # keep only the grid's positions, in the grid's order
    rr = torch.as_tensor([r for r, _ in positions], device=x.device)
    cc = torch.as_tensor([c for _, c in positions], device=x.device)
    return pooled[:, 0, rr, cc].topk(min(top_k, len(positions)), dim=1).indices


@DETECTORS.register("sentinet")
class SentiNet(Detector):
    name = "sentinet"
    Config = SentiNetConfig

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg: SentiNetConfig = self.config
        if cfg.locate not in LOCATE:
            raise VetsetError(f"sentinet: locate must be one of {', '.join(LOCATE)}, got {cfg.locate!r}")
        if not 0 < cfg.window <= 1 or not 0 < cfg.stride <= 1:
            raise VetsetError("sentinet: window and stride must be fractions in (0, 1]")
        if cfg.carriers < 1:
            raise VetsetError("sentinet: carriers must be >= 1")
        n = len(data)
        score = np.zeros(n)
        if n == 0:
            return DetectorResult(self.name, score, np.zeros(0, bool))
        dm = get_detection_model(data, ctx, ModelSpec.from_options(cfg.arch, cfg.epochs))
        start = time.perf_counter()
        logits = torch.from_numpy(model_logits(data, dm, ctx)).double()
        probs = logits.softmax(1).numpy()
        pred = probs.argmax(1)
        labels = data.labels
        conf = probs[np.arange(n), labels]
        candidates = np.flatnonzero(pred == labels)
        pool = np.flatnonzero((pred == labels) & (conf >= cfg.min_confidence))

        h, w = data.image_size
        size = max(1, int(round(cfg.window * min(h, w))))
        stride = max(1, int(round(cfg.stride * size)))
        positions = window_positions(h, w, size, stride)
        probe = _Probe(dm.model, dm.device, data.images)
        masks = _window_masks(positions, size, (h, w), dm.device)
        fill = torch.as_tensor(data.images.reshape(-1, 3).mean(0) / 255.0, dtype=torch.float32,
                               device=dm.device)[None, :, None, None]
        rng = np.random.default_rng([ctx.seed, 2020])
        pools_by_class = {k: pool[labels[pool] != k] for k in range(data.num_classes)}
        chosen = np.full(n, -1, dtype=np.int64)
        for s in range(0, len(candidates), cfg.batch_size):
            idx = candidates[s:s + cfg.batch_size]
            x = probe.batch(idx)
            y = torch.as_tensor(labels[idx], device=dm.device)
            base = torch.as_tensor(conf[idx], dtype=torch.float32, device=dm.device)
            if cfg.locate == "occlusion":
                drops = torch.stack([_occlusion_drop(probe, x, y, base, m, fill) for m in masks], dim=1)
                best = drops.argmax(1)
            else:
                top = _gradient_candidates(probe, x, y, size, positions, fill, cfg.top_k)
                drops = torch.stack([_occlusion_drop(probe, x, y, base, masks[top[:, j]], fill)
                                     for j in range(top.shape[1])], dim=1)
                best = top.gather(1, drops.argmax(1, keepdim=True)).squeeze(1)
            chosen[idx] = best.cpu().numpy()
            score[idx] = self._fooled_rate(probe, x, labels[idx], masks[best], pools_by_class, cfg.carriers, rng,
                                           max(1, cfg.batch_size // cfg.carriers))
        flag = score >= cfg.threshold
        return DetectorResult(self.name, score, flag, None, self._info(data, dm, flag, chosen, positions, size, {
            "rows_tested": int(len(candidates)), "carrier_pool": int(len(pool)), "windows": len(positions),
            "window_px": size, "stride_px": stride, "seconds": round(time.perf_counter() - start, 3)}))

    @staticmethod
    def _fooled_rate(probe: _Probe, x: torch.Tensor, labels: np.ndarray, region: torch.Tensor,
                     pools_by_class: dict[int, np.ndarray], m: int, rng: np.random.Generator,
                     rows_per_pass: int) -> np.ndarray:
        """Per row of ``x``: the share of ``m`` carrier images of other classes that the
        model assigns to the row's label once the row's ``region`` (B, 1, H, W mask) is pasted
        onto them. Rows without carriers score 0."""
        out = np.zeros(len(x))
        carrier_idx = np.full((len(x), m), -1, dtype=np.int64)
        for i, k in enumerate(labels):
            pool = pools_by_class[int(k)]
            if len(pool):
                carrier_idx[i] = rng.choice(pool, m, replace=len(pool) < m)
        have = np.flatnonzero(carrier_idx[:, 0] >= 0)
        for s in range(0, len(have), rows_per_pass):
            ok = have[s:s + rows_per_pass]
            carriers = probe.batch(carrier_idx[ok].reshape(-1)).view(len(ok), m, *x.shape[1:])
            ok_t = torch.as_tensor(ok, device=x.device)
            mask = region[ok_t][:, None]
            pasted = carriers * (1 - mask) + x[ok_t][:, None] * mask
            pred = probe.probs(pasted.flatten(0, 1)).argmax(1).view(len(ok), m).cpu().numpy()
            out[ok] = (pred == labels[ok][:, None]).mean(1)
        return out

    @staticmethod
    def _info(data: ImageDataset, dm, flag: np.ndarray, chosen: np.ndarray, positions, size: int,
              extra: dict) -> dict:
        """Per-class flag counts and the windows the flagged rows' regions sat in (a real
        patch trigger shows up as one window holding most flagged rows)."""
        per_class = {data.class_names[k]: int(flag[data.labels == k].sum())
                     for k in range(data.num_classes) if flag[data.labels == k].any()}
        common = Counter(int(j) for j in chosen[flag] if j >= 0).most_common(3)
        windows = [{"top": positions[j][0], "left": positions[j][1], "size": size, "rows": c} for j, c in common]
        if windows:
            w = windows[0]
            finding = (f"{int(flag.sum())} rows whose region alone moves other classes' images to their label "
                       f"(classes: {', '.join(f'{k} {v}' for k, v in per_class.items())}); {w['rows']} of them in the "
                       f"window rows {w['top']}-{w['top'] + size - 1}, columns {w['left']}-{w['left'] + size - 1}")
        else:
            finding = "no row's region moved other classes' images to its label"
        evidence = []
        for k in range(data.num_classes):
            in_k = flag & (data.labels == k)
            count, rows_k = int(in_k.sum()), int((data.labels == k).sum())
            top = Counter(int(j) for j in chosen[in_k] if j >= 0).most_common(1)
            share = top[0][1] / count if count else 0.0
            # a patch trigger: enough rows of the class, most of them in one window
            strong = count >= max(10, 0.01 * rows_k) and share >= 0.5
            evidence.append({"class": int(k), "signal": "sentinet_rows", "value": count,
                             "threshold": max(10, int(np.ceil(0.01 * rows_k))), "strength": "strong" if strong else "none",
                             "detail": f"{share:.0%} of them in one window" if count else ""})
        # per class, every window its flagged rows' regions sat in (the report's heat map)
        regions = {}
        for k in range(data.num_classes):
            counts = Counter(int(j) for j in chosen[flag & (data.labels == k)] if j >= 0)
            if counts:
                regions[data.class_names[k]] = [{"top": positions[j][0], "left": positions[j][1], "size": size,
                                                 "rows": c} for j, c in sorted(counts.items())]
        return {"model": dm.describe(), **extra, "flagged_per_class": per_class, "top_windows": windows,
                "regions_per_class": regions, "finding": finding, "class_evidence": evidence}
