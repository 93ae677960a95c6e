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
    # per-row arrays for the verdict (first axis = rows; e.g. the training-dynamics
    # signals), kept with the result but not written to the manifest
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.score = np.asarray(self.score, dtype=np.float64)
        self.flag = np.asarray(self.flag, dtype=bool)
        if self.score.shape != self.flag.shape:
            raise ValueError(f"{self.name}: score and flag lengths differ")
        if self.suggested_label is not None:
            self.suggested_label = np.asarray(self.suggested_label, dtype=np.int64)
        for key, value in self.arrays.items():
            if len(value) != len(self.score):
                raise ValueError(f"{self.name}: array {key!r} has {len(value)} rows for {len(self.score)} scores")


# the audit's default torch thread count (AuditContext.threads): 2 is what CI and the
# benchmark machines have; on one core it ran ~10% slower than 1 thread (a 1,200-digit
# training, 11.2 s against 10.1 s)
AUDIT_THREADS = 2


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
    # where models trained for detection keep a checkpoint each epoch (None = no
    # checkpoints): a re-run after a crash or kill -9 resumes the training where it stopped
    checkpoint_dir: str | None = None
    # torch's intra-op threads while each detector runs (run_detector): fixed, so that the
    # same data and seed give the same flags on a 1-, 2- or 16-core machine (torch's CPU
    # reductions depend on the thread count and training amplifies the difference; see
    # trainers/threads.py). None or 0 = leave torch's setting (faster on many cores; the
    # flags may then differ with the thread count).
    threads: int | None = AUDIT_THREADS


class Detector:
    """Base class. Subclasses set ``name`` and ``Config`` (a dataclass) and implement
    ``score``. Register with ``@DETECTORS.register("name")``."""

    name: ClassVar[str] = ""
    # What the detector's flags mean, declared by the detector (the fusion and the verdict
    # read it; nothing lists detectors by name):
    # - "specialist": a calibrated decision of its own about injected / triggered rows; it
    #   may flag a row alone (AGPD, SentiNet, VDC);
    # - "label_noise": a calibrated decision about wrong labels, with suggested labels; it
    #   may flag a row alone (confident learning);
    # - "ranker": it ranks rows; its flags, where it has any, are a share of the rows fixed
    #   by design, dirty or not, so they count only where another detector agrees
    #   (spectral signatures, activation clustering, ABL isolation, the patch outlier
    #   heuristic, training dynamics).
    kind: ClassVar[str] = "specialist"
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

    def check(self) -> None:
        """Cheap checks of the options that need no data (a model that is not on disk...),
        run before any work (the CLI: before Prefect starts; the audit flow: before it loads
        the data): raise a one-line VetsetError. Default: none."""

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


KINDS = ("specialist", "label_noise", "ranker")

DETECTORS: Registry[type[Detector]] = Registry("detector")


def detector_kind(name: str) -> str:
    """The declared kind of a registered detector ("specialist" for unknown names, such as a
    result built by hand in a test)."""
    if name not in DETECTORS:
        return "specialist"
    kind = DETECTORS.get(name).kind
    if kind not in KINDS:
        raise ValueError(f"detector {name!r} declares kind {kind!r}; kinds are {', '.join(KINDS)}")
    return kind
