"""Post-training purification: repair a trained (possibly backdoored) model with a small
clean set. One module per method, each registered in :data:`PURIFIERS`:

``sau`` shared adversarial unlearning, ``npd`` neural polarizer, ``ftsam`` fine-tuning with
sharpness-aware minimisation, ``tsbd`` neuron weight change + activeness-aware fine-tuning,
``awm`` adversarial weight masking (few-shot), ``ft`` fine-tuning, ``fp`` fine-pruning,
``nc`` Neural Cleanse (also a backdoor verdict and the target class) and ``strip``
(an inference-time input filter saved with the model).

Every method runs on the shared training loop (:func:`trainers.loop.fit`) through its hooks.
See docs/purification.md.
"""
from . import awm, fp, ft, ftsam, nc, npd, sau, strip, tsbd  # noqa: F401  (registration)
from .base import PURIFIERS, Purifier, config_dict, make_config, purify
from .layers import Polarizer, insert_polarizer
from .strip import StripWrapper

__all__ = ["PURIFIERS", "Purifier", "config_dict", "make_config", "purify", "Polarizer", "insert_polarizer",
           "StripWrapper"]
