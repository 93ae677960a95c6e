"""CLIP detectors (open_clip): image-label consistency from a contrastive image-text model.

``clip``: zero-shot probabilities over the class names (a prompt ensemble), calibrated per
class, flags from cleanlab on them; ``clip_knn``: label agreement among each row's nearest
neighbours in CLIP's embedding space, through cleanlab's Datalab. Both are label-noise
detectors with suggested labels; VDC can cascade from either (``--set vdc.cascade_from=clip``).
Weights are never downloaded (cleansers.clip.model). See docs/clip.md.
"""
from .detectors import ClipDetector, ClipKnnDetector  # noqa: F401  (registration)
