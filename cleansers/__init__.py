"""Detectors: importing this package registers every detector in ``cleansers.base.DETECTORS``.

``DEFAULT_DETECTORS``: what an audit runs when the user names no detector. AGPD (backdoor
triggers: it finds the target class and the poisoned rows inside it, and declares clean data
clean) plus confident learning (wrong labels, with a suggested label). Both are specialists
in the fusion (they flag alone); they train one detection model plus k small fold models, the
cheapest pair that covers both kinds of dirt (ABL trains its own model for 20 epochs and
flags a fixed share of the rows; spectral signatures and activation clustering flag fixed
shares too and count only with agreement). Measurements: docs/benchmarks.md, "Detectors".
"""
from . import abl, activation_clustering, agpd, confident, spectral  # noqa: F401  (registration)
from . import vdc  # noqa: F401
from . import pixel_stats  # noqa: F401

DEFAULT_DETECTORS: tuple[str, ...] = ("agpd", "confident")
