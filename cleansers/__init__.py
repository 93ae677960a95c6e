"""Detectors: importing this package registers every detector in ``cleansers.base.DETECTORS``.

``DEFAULT_DETECTORS``: what an audit runs when the user names no detector. AGPD (backdoor
triggers: it finds the target class and the poisoned rows inside it, and declares clean data
clean) plus confident learning (wrong labels, with a suggested label). Both are specialists
in the fusion (they flag alone), so a clean dataset comes back (nearly) clean; ABL, spectral
signatures and activation clustering flag a fixed share of every dataset and count only with
agreement. Not yet measured at full size (CIFAR-10 on a GPU). On the small embedded demo
(digits with BadNets and label noise) AGPD picked the wrong target class, so ``vetset demo``
audits with ABL instead. Measurements: docs/benchmarks.md, "Detectors" and "Demo".
"""
from . import abl, activation_clustering, agpd, confident, spectral  # noqa: F401  (registration)
from . import vdc  # noqa: F401
from . import pixel_stats  # noqa: F401

DEFAULT_DETECTORS: tuple[str, ...] = ("agpd", "confident")
