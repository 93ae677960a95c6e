"""The one in-memory form of a dataset that every stage of vetset works on.

Images are decoded once into a uint8 array (N, H, W, 3). Rows whose bytes could not be
decoded are kept (as black images) and marked in ``unreadable`` so that row count in equals
row count out.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadStats:
    """What loading had to do to bring every row to one shape."""

    n_rows: int = 0
    n_unreadable: int = 0
    n_resized: int = 0
    n_converted: int = 0  # grayscale, RGBA, palette... converted to RGB
    n_duplicate_ids: int = 0  # repeated source ids, made unique with a '#k' suffix
    source: str = ""
    source_format: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ImageDataset:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    sample_ids: np.ndarray  # object array of str (N,)
    unreadable: np.ndarray | None = None  # bool (N,)
    stats: LoadStats = field(default_factory=LoadStats)
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.images = np.ascontiguousarray(self.images, dtype=np.uint8)
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {self.images.shape}")
        n = len(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(n)
        self.sample_ids = np.asarray([str(s) for s in self.sample_ids], dtype=object).reshape(n)
        if self.unreadable is None:
            self.unreadable = np.zeros(n, dtype=bool)
        self.unreadable = np.asarray(self.unreadable, dtype=bool).reshape(n)
        self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def fingerprint(self) -> str:
        """Content hash of pixels, labels, ids and class names (stable across runs)."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(str(self.images.shape).encode())
            h.update(self.images.tobytes())
            h.update(self.labels.tobytes())
            h.update("\x1f".join(self.sample_ids.tolist()).encode())
            h.update("\x1f".join(self.class_names).encode())
            h.update(self.unreadable.tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def subset(self, index) -> "ImageDataset":
        index = np.asarray(index)
        return ImageDataset(
            images=self.images[index],
            labels=self.labels[index],
            class_names=list(self.class_names),
            sample_ids=self.sample_ids[index],
            unreadable=self.unreadable[index],
            stats=LoadStats(n_rows=int(len(self.images[index])), source=self.stats.source,
                            source_format=self.stats.source_format),
        )

    def replace(self, *, images: np.ndarray | None = None, labels: np.ndarray | None = None) -> "ImageDataset":
        """A copy with new pixels and/or labels (ids, classes and unreadable marks kept)."""
        return ImageDataset(
            images=self.images.copy() if images is None else images,
            labels=self.labels.copy() if labels is None else labels,
            class_names=list(self.class_names),
            sample_ids=self.sample_ids.copy(),
            unreadable=self.unreadable.copy(),
            stats=LoadStats(**self.stats.to_dict()),
        )


def row_digests(images: np.ndarray) -> np.ndarray:
    """One 64-bit content digest per image (blake2b of its decoded pixels and shape), for
    telling which rows a model was trained on without keeping the rows: a trained model
    records the digests of its training rows (trainers/saved.py), and purification checks
    its clean rows against them."""
    images = np.ascontiguousarray(images)
    out = np.empty(len(images), dtype=np.uint64)
    shape = str(images.shape[1:]).encode()
    for i, img in enumerate(images):
        h = hashlib.blake2b(img.tobytes(), digest_size=8, person=b"vetset-row")
        h.update(shape)
        out[i] = np.frombuffer(h.digest(), dtype="<u8")[0]
    return out
