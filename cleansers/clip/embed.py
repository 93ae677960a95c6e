"""CLIP embeddings of images and class prompts, batched, with a per-(image hash, model) cache.

Images (uint8 NHWC) are resized to the model's input size (bicubic, antialiased when
shrinking) and normalised with its mean / std on the device; bf16 on CUDA, fp32 on the CPU.
Image embeddings are L2-normalised float32 and cached on disk under
``<cache_dir>/<model key hash>/part-*.parquet`` (one row per image hash; append-only, each
run adds one part written atomically), so a re-audit embeds only new images, and within an
audit in ``AuditContext.model_cache`` so that ``clip`` and ``clip_knn`` share one pass.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F

from pipelines.atomic import atomic_write_table
from pipelines.errors import VetsetError

from .model import ClipModel

DEFAULT_CACHE_DIR = "auto"  # $VETSET_CACHE_DIR/clip, else the user's cache folder for vetset + /clip


def cache_root(cache_dir: str | None) -> str | None:
    """Where embeddings are kept: ``cache_dir`` as given, None for no disk cache, and "auto"
    for ``$VETSET_CACHE_DIR/clip`` or the user's cache folder for vetset (platformdirs)."""
    if cache_dir != "auto":
        return cache_dir
    env = os.environ.get("VETSET_CACHE_DIR")
    if env:
        return str(Path(env) / "clip")
    from platformdirs import user_cache_dir

    return str(Path(user_cache_dir("vetset")) / "clip")
# the usual zero-shot prompt ensemble (CLIP's ImageNet templates, a short subset)
DEFAULT_PROMPTS: tuple[str, ...] = (
    "a photo of a {}.", "a blurry photo of a {}.", "a low resolution photo of a {}.", "a photo of the small {}.",
    "a photo of the large {}.", "a close-up photo of a {}.", "a bright photo of a {}.", "a cropped photo of a {}.",
    "a photo of the {}.", "a good photo of a {}.",
)


def image_hashes(images: np.ndarray) -> list[str]:
    from ..vdc.backends import image_hashes as hashes

    return hashes(images)


class EmbeddingCache:
    """Image embeddings by image hash for one model key (Parquet part files)."""

    def __init__(self, root: str | os.PathLike | None, model_key: str):
        self.model_key = model_key
        self.dir = None
        if root:
            slug = hashlib.blake2b(model_key.encode(), digest_size=8).hexdigest()
            self.dir = Path(os.path.expanduser(str(root))) / slug
        self._rows: dict[str, np.ndarray] = {}

    def load(self) -> "EmbeddingCache":
        if self.dir is not None and self.dir.exists():
            for part in sorted(self.dir.glob("part-*.parquet")):
                frame = pd.read_parquet(part)
                frame = frame[frame["model"] == self.model_key]
                for h, e in zip(frame["image_hash"], frame["embedding"]):
                    self._rows[h] = np.asarray(e, dtype=np.float32)
        return self

    def get(self, image_hash: str) -> np.ndarray | None:
        return self._rows.get(image_hash)

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, hashes: list[str], embeddings: np.ndarray) -> Path | None:
        if not len(hashes):
            return None
        for h, e in zip(hashes, embeddings):
            self._rows[h] = np.asarray(e, dtype=np.float32)
        if self.dir is None:
            return None
        dim = int(embeddings.shape[1])
        table = pa.table({
            "image_hash": pa.array(hashes, pa.string()),
            "model": pa.array([self.model_key] * len(hashes), pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.asarray(embeddings, dtype=np.float32).reshape(-1)), dim),
        })
        return atomic_write_table(table, self.dir / f"part-{uuid.uuid4().hex}.parquet")


def _prepare(clip: ClipModel, images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(clip.device).permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(x.shape[-2:]) != clip.image_size:
        shrink = x.shape[-2] > clip.image_size[0] or x.shape[-1] > clip.image_size[1]
        x = F.interpolate(x, size=clip.image_size, mode="bicubic", align_corners=False, antialias=shrink)
        x = x.clamp_(0.0, 1.0)
    mean = torch.tensor(clip.mean, device=clip.device).view(1, 3, 1, 1)
    std = torch.tensor(clip.std, device=clip.device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(clip.dtype)


@torch.no_grad()
def embed_images(clip: ClipModel, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """L2-normalised image embeddings (N, D) float32."""
    out = []
    for a in range(0, len(images), max(1, batch_size)):
        feats = clip.model.encode_image(_prepare(clip, images[a:a + batch_size]), normalize=True)
        out.append(feats.float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32)


def cached_image_embeddings(clip: ClipModel, images: np.ndarray, *, cache_dir: str | None,
                            batch_size: int = 256) -> tuple[np.ndarray, dict]:
    """Embeddings of ``images`` with the disk cache; returns (embeddings, counts)."""
    hashes = image_hashes(images)
    cache = EmbeddingCache(cache_root(cache_dir), clip.key).load()
    got = [cache.get(h) for h in hashes]
    todo = [i for i, e in enumerate(got) if e is None]
    if todo:
        # the same image twice in the data is embedded once
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(hashes[i], i)
        uniq = list(first.values())
        new = embed_images(clip, images[uniq], batch_size)
        cache.add([hashes[i] for i in uniq], new)
        for i in todo:
            got[i] = cache.get(hashes[i])
    dims = {e.shape[0] for e in got}
    if len(dims) > 1:
        raise VetsetError(f"clip embedding cache {cache.dir}: embeddings of different sizes {sorted(dims)} "
                          "under one model key; remove that folder")
    emb = np.stack(got).astype(np.float32) if got else np.zeros((0, 0), np.float32)
    return emb, {"embedded_now": len(todo), "from_cache": len(hashes) - len(todo),
                 "cache_dir": str(cache.dir) if cache.dir else None}


def resolve_prompts(prompts: list[str] | str | None) -> list[str]:
    """Prompt templates with ``{}`` for the class name: a list, a JSON file holding a list,
    one template string, or None (the default ensemble)."""
    if prompts is None:
        return list(DEFAULT_PROMPTS)
    if isinstance(prompts, str):
        path = Path(os.path.expanduser(prompts))
        if path.suffix == ".json" or path.is_file():
            if not path.is_file():
                raise VetsetError(f"clip prompts file not found: {path}")
            try:
                prompts = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise VetsetError(f"clip prompts {path}: not valid JSON ({exc})") from None
        else:
            prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise VetsetError("clip prompts must be a non-empty list of strings with {} for the class name")
    bad = [p for p in prompts if "{}" not in p]
    if bad:
        raise VetsetError(f"clip prompt {bad[0]!r} has no {{}} for the class name")
    return list(prompts)


def readable_name(name: str) -> str:
    return str(name).replace("_", " ").strip()


@torch.no_grad()
def embed_classes(clip: ClipModel, class_names: list[str], prompts: list[str]) -> np.ndarray:
    """One L2-normalised text embedding per class: the mean of its prompts' embeddings."""
    out = []
    for name in class_names:
        tokens = clip.tokenizer([p.format(readable_name(name)) for p in prompts]).to(clip.device)
        feats = clip.model.encode_text(tokens, normalize=True).float()
        mean = feats.mean(0)
        out.append((mean / mean.norm().clamp_min(1e-12)).cpu().numpy())
    return np.stack(out).astype(np.float32)
