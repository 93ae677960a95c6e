"""Detectors: importing this package registers every detector in ``cleansers.base.DETECTORS``.

``DEFAULT_DETECTORS``: what an audit runs when the user names no detector. AGPD (backdoor
triggers: it finds the target class and the poisoned rows inside it, and declares clean data
clean), confident learning (wrong labels, with a suggested label; it withholds its flags
when its models are too weak to tell a wrong label from a hard image) and the SentiNet-style
transplant test (patch triggers; cheap, it reuses AGPD's model). All three are specialists
in the fusion (they flag alone), so a clean dataset comes back (nearly) clean; ABL, spectral
signatures and activation clustering flag a fixed share of every dataset and count only with
agreement. Not yet measured at full size (CIFAR-10 on a GPU); on the 6,000-row CPU slice with 5%
BadNets, see docs/benchmarks.md. On the small embedded demo
(digits with BadNets and label noise) AGPD picked the wrong target class, so ``vetset demo``
audits with ABL instead. Measurements: docs/benchmarks.md, "Detectors" and "Demo".
"""
from . import abl, activation_clustering, agpd, confident, dynamics, spectral  # noqa: F401  (registration)
from . import vdc  # noqa: F401
from . import pixel_stats, sentinet  # noqa: F401
from . import clip  # noqa: F401  (open_clip is imported only when a clip detector runs)

DEFAULT_DETECTORS: tuple[str, ...] = ("agpd", "dynamics", "confident", "sentinet")
