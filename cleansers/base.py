"""The detector interface: a dataset (+ shared context) in, one score per row out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from pipelines.dataset import ImageDataset
from pipelines.registry import Registry


@dataclass
class DetectorResult:
    """One detector's verdict on every row it was given.

    score: float per row, higher = dirtier (NaN where the row was not scored).
    flag: bool per row, the detector's own decision.
    suggested_label: int per row (-1 = no suggestion), for label-noise detectors.
    info: anything worth putting in metrics/report (thresholds, target classes...).
    """

    name: str
    score: np.ndarray
    flag: np.ndarray
    suggested_label: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.score = np.asarray(self.score, dtype=np.float64)
        self.flag = np.asarray(self.flag, dtype=bool)
        if self.score.shape != self.flag.shape:
            raise ValueError(f"{self.name}: score and flag lengths differ")
        if self.suggested_label is not None:
            self.suggested_label = np.asarray(self.suggested_label, dtype=np.int64)


@dataclass
class AuditContext:
    """What detectors of one audit share: device, seed, an optional trusted clean set, the
    expected dirty fraction, earlier detectors' results, and a cache for models trained on the data (keyed by dataset
    fingerprint + model config) so that several detectors reuse one training run."""

    device: str = "auto"
    seed: int = 0
    trusted: ImageDataset | None = None
    expected_dirty_rate: float = 0.1
    model_cache: dict = field(default_factory=dict)
    # results of the detectors that already ran in this audit, by name (row order = the
    # dataset's); a cascade detector such as VDC reads them to pick the rows worth its cost
    results: dict[str, "DetectorResult"] = field(default_factory=dict)
    # the positions (in the full dataset) of the rows the running detector was given:
    # run_detector hides unreadable rows, so results[...][rows] lines up with its input
    rows: np.ndarray | None = None


class Detector:
    """Base class. Subclasses set ``name`` and ``Config`` (a dataclass) and implement
    ``score``. Register with ``@DETECTORS.register("name")``."""

    name: ClassVar[str] = ""
    # True when a row's score depends on that row alone (and the config), never on the other
    # rows: such a detector can be cached per row (sample_id + content hash) and sharded
    # fully. Model-based detectors (trained on the whole dataset) leave it False: they are
    # cached per (dataset fingerprint, config) as a whole.
    row_independent: ClassVar[bool] = False

    @dataclass
    class Config:
        pass

    def __init__(self, config: Any = None, **overrides: Any):
        cfg = config if config is not None else self.Config()
        for key, value in overrides.items():
            if not hasattr(cfg, key):
                raise TypeError(f"{self.name}: unknown option {key!r}")
            setattr(cfg, key, value)
        self.config = cfg

    def score(self, data: ImageDataset, ctx: AuditContext) -> DetectorResult:  # pragma: no cover
        raise NotImplementedError

    # Sharded scoring: ``prepare`` once (train a model, load a backend...), then
    # ``score_rows`` on shards (any order, any process), then ``finalize`` on all the scores.
    # The defaults fall back to one ``score`` call whose result the shards slice; a detector
    # overrides the three to shard its scoring phase for real.

    def prepare(self, data: ImageDataset, ctx: AuditContext) -> Any:
        """Work shared by every shard; the return value is handed to ``score_rows``/``finalize``.
        Row-independent detectors must not let it depend on ``data``'s rows."""
        return self.score(data, ctx)

    def score_rows(self, data: ImageDataset, rows: np.ndarray, ctx: AuditContext, state: Any) -> np.ndarray:
        """Scores (float per row, higher = dirtier) of the shard ``data``, whose rows sit at
        positions ``rows`` of the dataset ``prepare`` saw."""
        return np.asarray(state.score, dtype=np.float64)[np.asarray(rows)]

    def finalize(self, data: ImageDataset, scores: np.ndarray, ctx: AuditContext, state: Any) -> DetectorResult:
        """The result over the whole of ``data`` from all its rows' scores (flags need them all)."""
        return state

    @classmethod
    def shards_for_real(cls) -> bool:
        """Whether ``score_rows`` is overridden (else sharding only slices one ``score`` result)."""
        return cls.score_rows is not Detector.score_rows


DETECTORS: Registry[type[Detector]] = Registry("detector")
