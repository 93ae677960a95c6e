"""Decode encoded image bytes into one uint8 (N, H, W, 3) array.

A row whose bytes cannot be decoded is kept as a black image and marked unreadable.
Grayscale, RGBA, palette and CMYK images are converted to RGB; images whose size differs
from the dataset's usual (most common) size are resized to it with bilinear filtering.
"""
from __future__ import annotations

import io
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

_RESAMPLE = Image.Resampling.BILINEAR


@dataclass
class DecodedImages:
    images: np.ndarray  # uint8 (N, H, W, 3)
    unreadable: np.ndarray  # bool (N,)
    n_resized: int
    n_converted: int


def _open(blob: bytes | None) -> Image.Image | None:
    if not blob:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(blob))
            img.load()  # force a full decode: truncated files fail here
        return img
    except Exception:  # any decoder failure means the row is unreadable
        return None


def _to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    if img.mode == "RGB":
        return img, False
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.split()[-1])
        return background, True
    return img.convert("RGB"), True


def decode_images(blobs: list[bytes | None], size: tuple[int, int] | None = None, workers: int = 4) -> DecodedImages:
    """Decode ``blobs``; ``size`` is (H, W), or None for the most common size among them."""
    n = len(blobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        opened = list(pool.map(_open, blobs, chunksize=256))
    unreadable = np.array([img is None for img in opened], dtype=bool)
    if size is None:
        sizes = Counter(img.size for img in opened if img is not None)  # PIL size = (W, H)
        w, h = sizes.most_common(1)[0][0] if sizes else (32, 32)
        size = (h, w)
    h, w = size
    out = np.zeros((n, h, w, 3), dtype=np.uint8)
    n_resized = n_converted = 0
    for i, img in enumerate(opened):
        if img is None:
            continue
        img, converted = _to_rgb(img)
        n_converted += converted
        if img.size != (w, h):
            img = img.resize((w, h), _RESAMPLE)
            n_resized += 1
        out[i] = np.asarray(img, dtype=np.uint8)
    return DecodedImages(out, unreadable, n_resized, n_converted)
