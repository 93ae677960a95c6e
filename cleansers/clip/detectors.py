"""The ``clip`` and ``clip_knn`` detectors (label-noise kind): image-label consistency from an
open_clip model, one forward pass per image (cached), instead of VDC's generated answers.
Their decisions are in :mod:`cleansers.clip.scoring`; loading in :mod:`cleansers.clip.model`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from pipelines.dataset import ImageDataset
from trainers.accel import resolve_device

from ..base import DETECTORS, AuditContext, Detector, DetectorResult
from .embed import DEFAULT_CACHE_DIR, cached_image_embeddings, embed_classes, resolve_prompts
from .model import ClipModel, check_model_options, load_clip
from .scoring import Decision, knn_decision, zero_shot_decision


@dataclass
class ClipModelOptions:
    model: str = ""  # local open_clip folder, weights file (with arch), cached NAME:TAG or hf-hub:ORG/REPO
    arch: str | None = None  # open_clip model name, for a bare weights file
    batch_size: int = 256
    device: str = "auto"  # "auto": the audit's device
    dtype: str = "auto"  # bf16 on CUDA, fp32 on the CPU
    cache_dir: str | None = DEFAULT_CACHE_DIR  # embeddings per (image hash, model): auto = $VETSET_CACHE_DIR/clip
    # or the user cache; None = none


def shared_clip(cfg: ClipModelOptions, ctx: AuditContext) -> ClipModel:
    """One loaded model per audit for the same (model, arch, device, dtype)."""
    device = resolve_device(cfg.device if cfg.device != "auto" else (ctx.device or "auto"))
    key = ("clip_model", cfg.model, cfg.arch, str(device), cfg.dtype)
    if key not in ctx.model_cache:
        ctx.model_cache[key] = load_clip(cfg.model, arch=cfg.arch, device=device, dtype=cfg.dtype)
    return ctx.model_cache[key]


def shared_embeddings(data: ImageDataset, cfg: ClipModelOptions, ctx: AuditContext) -> tuple[ClipModel, np.ndarray, dict]:
    """The image embeddings of ``data`` (one pass per audit, shared by clip and clip_knn)."""
    clip = shared_clip(cfg, ctx)
    key = ("clip_embeddings", clip.key, data.fingerprint)
    if key not in ctx.model_cache:
        t0 = time.perf_counter()
        emb, counts = cached_image_embeddings(clip, data.images, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size)
        ctx.model_cache[key] = (emb, dict(counts, embed_seconds=round(time.perf_counter() - t0, 3)))
        return clip, emb, dict(ctx.model_cache[key][1])
    emb, counts = ctx.model_cache[key]
    return clip, emb, dict(counts, embedded_now=0, shared_with_earlier_detector=True)


def _result(name: str, n: int, d: Decision, info: dict) -> DetectorResult:
    return DetectorResult(name, d.score, d.flag, d.suggested, {**info, **d.info}, d.arrays)


@DETECTORS.register("clip")
class ClipDetector(Detector):
    """Zero-shot CLIP (open_clip): probabilities over the dataset's class names from a prompt
    ensemble, calibrated per class; score = 1 - p(given label); rows flagged by cleanlab on
    those probabilities where another class wins, with that class suggested when confident.
    Withheld when CLIP's zero-shot accuracy is low (class names it does not know)."""

    name: ClassVar[str] = "clip"
    kind: ClassVar[str] = "label_noise"

    @dataclass
    class Config(ClipModelOptions):
        prompts: list[str] | str | None = None  # templates with {} (list, JSON file); None = 10-prompt ensemble
        filter_by: str = "both"  # cleanlab filter on the zero-shot probabilities
        min_accuracy: float = 0.5  # zero-shot accuracy against the given labels below which nothing is flagged
        suggest_min: float = 0.5  # a flagged row's suggested label needs this probability

    def check(self) -> None:
        check_model_options(self.config.model, arch=self.config.arch, dtype=self.config.dtype)

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg = self.config
        n = len(data)
        if n == 0:
            return DetectorResult(self.name, np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64))
        prompts = resolve_prompts(cfg.prompts)
        clip, emb, counts = shared_embeddings(data, cfg, ctx)
        t0 = time.perf_counter()
        class_emb = embed_classes(clip, data.class_names, prompts)
        text_seconds = round(time.perf_counter() - t0, 3)
        decision = zero_shot_decision(emb, class_emb, data.labels, clip.logit_scale, filter_by=cfg.filter_by,
                                      min_accuracy=cfg.min_accuracy, suggest_min=cfg.suggest_min,
                                      class_names=list(data.class_names))
        return _result(self.name, n, decision, {"model": clip.source, "model_key": clip.key,
                                                "prompts": len(prompts), "text_seconds": text_seconds, **counts})


@DETECTORS.register("clip_knn")
class ClipKnnDetector(Detector):
    """Neighbour label agreement in CLIP's image embedding space (open_clip): each row's k
    nearest neighbours vote; cleanlab's Datalab finds label issues on the votes and
    near-duplicate sets on the embeddings; flagged where Datalab agrees and at most
    max_agreement of the neighbours share the row's label. Needs no class names."""

    name: ClassVar[str] = "clip_knn"
    kind: ClassVar[str] = "label_noise"

    @dataclass
    class Config(ClipModelOptions):
        k: int = 10  # neighbours that vote
        max_agreement: float = 0.5  # flagged only if at most this share of neighbours carry the label
        filter_by: str = "prune_by_noise_rate"  # cleanlab filter on the neighbour votes
        min_accuracy: float = 0.5  # vote accuracy against the given labels below which nothing is flagged
        suggest_min: float = 0.5  # a flagged row's suggested label needs this share of the neighbours
        near_duplicates: bool = True  # Datalab's near-duplicate sets (how many carry different labels)

    def check(self) -> None:
        check_model_options(self.config.model, arch=self.config.arch, dtype=self.config.dtype)

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:
        cfg = self.config
        n = len(data)
        if n == 0:
            return DetectorResult(self.name, np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64))
        clip, emb, counts = shared_embeddings(data, cfg, ctx)
        t0 = time.perf_counter()
        decision = knn_decision(emb, data.labels, data.num_classes, k=cfg.k, max_agreement=cfg.max_agreement,
                                min_accuracy=cfg.min_accuracy, suggest_min=cfg.suggest_min,
                                filter_by=cfg.filter_by, class_names=list(data.class_names),
                                near_duplicates=cfg.near_duplicates)
        return _result(self.name, n, decision, {"model": clip.source, "model_key": clip.key,
                                                "decide_seconds": round(time.perf_counter() - t0, 3), **counts})
