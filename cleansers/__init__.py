"""Detectors: importing this package registers every detector in ``cleansers.base.DETECTORS``.

``DEFAULT_DETECTORS``: what an audit runs when the user names no detector: ABL loss
isolation, the one detector measured to work on the embedded demo (digits, BadNets 10% +
5% symmetric noise: AUROC 0.97 on the poisoned rows with lr 0.1, 5 epochs, no augmentation).
AGPD + confident learning cover triggers and wrong labels together and are the intended
default for full-size data on a GPU, but on the demo they measured poisoned TPR 0.01 / noisy
TPR 0.62 (AGPD picked the wrong target class under label noise), so they stay opt-in
(``--detectors agpd,confident``) until they are measured on CIFAR-10 on the GPU machine.
Measurements: docs/benchmarks.md, "Detectors".
"""
from . import abl, activation_clustering, agpd, confident, spectral  # noqa: F401  (registration)
from . import vdc  # noqa: F401
from . import pixel_stats  # noqa: F401

DEFAULT_DETECTORS: tuple[str, ...] = ("abl",)
