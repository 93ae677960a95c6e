"""Label-noise simulators: symmetric, pair-flip (asymmetric) and instance-dependent, seeded.

``shared/specs/attacks.md``: symmetric noise replaces a row's label by a uniformly random
OTHER class; pair flip sends class c to one fixed other class. The rate is the fraction of
the whole dataset whose label changes (exactly ``round(rate * N)`` rows, capped at the rows
that can change), the same convention as the poisoning rate in :mod:`pipelines.simulate`.
Note this differs from the Patrini et al. (2017) convention for asymmetric noise, where the
rate is the flip probability *within each source class*.

A noise model is a class registered in ``NOISES``; the simulator asks it which rows are
eligible (:meth:`LabelNoise.eligible`) and what their new labels are
(:meth:`LabelNoise.corrupt`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import VetsetError
from .registry import Registry

NOISES: Registry[type["LabelNoise"]] = Registry("label noise")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

# The usual CIFAR-10 asymmetric map (Patrini et al., CVPR 2017, "Making deep neural networks
# robust to label noise: a loss correction approach"; also Co-teaching and DivideMix):
# truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog; plus automobile -> truck
# so the vehicle pair is symmetric like cat/dog. airplane, frog, horse and ship have no entry
# and are never flipped under this map.
CIFAR10_PAIRS: dict[str, str] = {
    "truck": "automobile",
    "automobile": "truck",
    "bird": "airplane",
    "deer": "horse",
    "cat": "dog",
    "dog": "cat",
}


class LabelNoise:
    """Base class: ``eligible(labels)`` -> bool mask, ``corrupt(labels, rng)`` -> new labels
    (every returned label differs from the input one)."""

    name: ClassVar[str] = ""

    def __init__(self, class_names: list[str], **params):
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if self.num_classes < 2:
            raise VetsetError(f"label noise needs at least 2 classes, got {self.num_classes}")
        if params:
            raise VetsetError(f"unknown parameter(s) {sorted(params)} for label noise {self.name!r}")

    def eligible(self, labels: np.ndarray) -> np.ndarray:
        return np.ones(len(labels), dtype=bool)

    def weights(self, labels: np.ndarray) -> np.ndarray | None:
        """Relative chance of each row to be chosen (None = uniform among eligible rows)."""
        return None

    def corrupt(self, labels: np.ndarray, rng: np.random.Generator, rows: np.ndarray | None = None) -> np.ndarray:
        """New labels for ``labels`` (the labels of dataset rows ``rows``)."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"noise": self.name}


@NOISES.register("symmetric")
class Symmetric(LabelNoise):
    """Each chosen row gets a label drawn uniformly from the K - 1 other classes."""

    name = "symmetric"

    def corrupt(self, labels: np.ndarray, rng: np.random.Generator, rows: np.ndarray | None = None) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        shift = rng.integers(1, self.num_classes, size=len(labels))
        return (labels + shift) % self.num_classes


@NOISES.register("pairflip")
class PairFlip(LabelNoise):
    """Class c -> one fixed other class.

    ``mapping``:
      * ``"auto"`` (default): ``"cifar10"`` when the class names are CIFAR-10's (in any
        order, case-insensitive), else ``"next"``;
      * ``"next"``: c -> (c + 1) mod K (the pair-flip of Han et al. 2018, Co-teaching);
      * ``"cifar10"``: the name-based map ``CIFAR10_PAIRS`` (classes without an entry keep
        their labels and are not eligible);
      * a dict {source: destination} of class names or indices.
    """

    name = "pairflip"

    def __init__(self, class_names: list[str], mapping: str | dict = "auto"):
        super().__init__(class_names)
        self.mapping_name = mapping if isinstance(mapping, str) else "custom"
        self.table = self._build(mapping)  # (K,) destination, -1 = not flipped

    def _index(self, c) -> int:
        if isinstance(c, (int, np.integer)) or (isinstance(c, str) and c.isdigit() and c not in self.class_names):
            i = int(c)
            if not 0 <= i < self.num_classes:
                raise VetsetError(f"pairflip class index {i} out of range 0..{self.num_classes - 1}")
            return i
        try:
            return self.class_names.index(str(c))
        except ValueError:
            raise VetsetError(f"pairflip class {c!r} is not one of {self.class_names}") from None

    def _build(self, mapping) -> np.ndarray:
        k = self.num_classes
        if mapping == "auto":
            is_cifar = sorted(n.lower() for n in self.class_names) == sorted(CIFAR10_CLASSES)
            mapping = "cifar10" if is_cifar else "next"
            self.mapping_name = mapping
        if mapping == "next":
            return (np.arange(k, dtype=np.int64) + 1) % k
        if mapping == "cifar10":
            lower = [n.lower() for n in self.class_names]
            if sorted(lower) != sorted(CIFAR10_CLASSES):
                raise VetsetError("pairflip mapping 'cifar10' needs CIFAR-10's class names")
            table = np.full(k, -1, dtype=np.int64)
            for src, dst in CIFAR10_PAIRS.items():
                table[lower.index(src)] = lower.index(dst)
            return table
        if isinstance(mapping, dict):
            table = np.full(k, -1, dtype=np.int64)
            for src, dst in mapping.items():
                s, d = self._index(src), self._index(dst)
                if s == d:
                    raise VetsetError(f"pairflip maps class {src!r} onto itself")
                table[s] = d
            return table
        raise VetsetError(f"pairflip mapping must be 'auto', 'next', 'cifar10' or a dict, got {mapping!r}")

    def eligible(self, labels: np.ndarray) -> np.ndarray:
        return self.table[np.asarray(labels, dtype=np.int64)] >= 0

    def corrupt(self, labels: np.ndarray, rng: np.random.Generator, rows: np.ndarray | None = None) -> np.ndarray:
        out = self.table[np.asarray(labels, dtype=np.int64)]
        if (out < 0).any():
            raise VetsetError("pairflip asked to flip a class that has no destination")
        return out

    def mapping(self) -> dict[str, str]:
        """The map as {source class name: destination class name}."""
        return {self.class_names[s]: self.class_names[d] for s, d in enumerate(self.table) if d >= 0}

    def describe(self) -> dict:
        return {"noise": self.name, "mapping": self.mapping_name, "pairs": self.mapping()}


@NOISES.register("instance")
class InstanceDependent(LabelNoise):
    """Instance-dependent noise, the kind human annotators make (CIFAR-10N, Wei et al. ICLR
    2022): it lands on ambiguous images and follows the confusions a reader of the image
    would make. ``probs`` (N, K) is a reference model's out-of-sample class probabilities of
    each row of the clean dataset (``vetset poison --noise instance`` trains one); a row is
    chosen with weight ``1 - p(its label) + floor`` raised to ``sharpness`` (ambiguous rows
    far more often), and its new label is drawn from the reference model's probabilities
    over the other classes (the class the image most resembles, most often). ``floor`` keeps
    every row possible; ``sharpness`` 2 concentrates the flips on the images the reference
    model finds hardest without making them all of one kind."""

    name = "instance"

    def __init__(self, class_names: list[str], probs=None, sharpness: float = 2.0, floor: float = 0.05):
        super().__init__(class_names)
        if probs is None:
            raise VetsetError("instance noise needs a reference model's probabilities per row (probs); "
                              "`vetset poison --noise instance` trains one")
        self.probs = np.asarray(probs, dtype=np.float64)
        if self.probs.ndim != 2 or self.probs.shape[1] != self.num_classes:
            raise VetsetError(f"instance noise: probs must be (N, {self.num_classes}), got {self.probs.shape}")
        self.sharpness = float(sharpness)
        self.floor = float(floor)

    def _check(self, labels: np.ndarray) -> None:
        if len(labels) != len(self.probs):
            raise VetsetError(f"instance noise: probs has {len(self.probs)} rows, the dataset {len(labels)}")

    def weights(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        self._check(labels)
        p_own = self.probs[np.arange(len(labels)), labels]
        return (1.0 - p_own + self.floor) ** self.sharpness

    def corrupt(self, labels: np.ndarray, rng: np.random.Generator, rows: np.ndarray | None = None) -> np.ndarray:
        if rows is None:
            raise VetsetError("instance noise needs the rows' positions")
        labels = np.asarray(labels, dtype=np.int64)
        p = self.probs[np.asarray(rows)].copy()
        p[np.arange(len(labels)), labels] = 0.0
        p = p + 1e-6 * (p.sum(1, keepdims=True) == 0)  # a row the model was sure of: uniform
        p[np.arange(len(labels)), labels] = 0.0
        p = p / p.sum(1, keepdims=True)
        u = rng.random(len(labels))[:, None]
        return (p.cumsum(1) < u).sum(1).clip(0, self.num_classes - 1).astype(np.int64)

    def describe(self) -> dict:
        return {"noise": self.name, "sharpness": self.sharpness, "floor": self.floor}


def build_noise(name: str, class_names: list[str], params: dict | None = None) -> LabelNoise:
    return NOISES.get(name)(class_names, **(params or {}))


@dataclass
class NoiseResult:
    rows: np.ndarray  # int64 indices of rows whose label changed
    labels: np.ndarray  # the full new label array


def apply_label_noise(
    labels: np.ndarray, noise: LabelNoise, rate: float, rng: np.random.Generator,
    allowed: np.ndarray | None = None,
) -> NoiseResult:
    """Change exactly ``round(rate * N)`` labels (capped at the eligible rows), chosen
    uniformly at random among rows that are ``allowed`` and eligible for ``noise``."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0.0 <= rate <= 1.0:
        raise VetsetError(f"noise rate must be in [0, 1], got {rate}")
    mask = noise.eligible(labels)
    if allowed is not None:
        mask &= np.asarray(allowed, dtype=bool)
    candidates = np.flatnonzero(mask)
    k = min(round_count(rate, n), len(candidates))
    w = noise.weights(labels)
    p = None
    if w is not None and k:
        w = np.asarray(w, dtype=np.float64)[candidates]
        p = w / w.sum()
        k = min(k, int((p > 0).sum()))
    rows = np.sort(rng.choice(candidates, size=k, replace=False, p=p)) if k else np.zeros(0, np.int64)
    new = labels.copy()
    if k:
        new[rows] = noise.corrupt(labels[rows], rng, rows)
    return NoiseResult(rows=rows.astype(np.int64), labels=new)


def round_count(rate: float, n: int) -> int:
    """round(rate * n) with halves rounded up (not Python's banker's rounding)."""
    return int(np.floor(rate * n + 0.5))
