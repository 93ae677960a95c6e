"""Detectors: importing this package registers every detector in ``cleansers.base.DETECTORS``."""
from . import abl, activation_clustering, agpd, confident, spectral  # noqa: F401  (registration)
from . import vdc  # noqa: F401
from . import pixel_stats  # noqa: F401
