"""Flow parameters as validated pydantic models, with defaults that work."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator


def _default_detectors() -> tuple[str, ...]:
    from cleansers import DEFAULT_DETECTORS

    return DEFAULT_DETECTORS


def _audit_threads() -> int:
    from cleansers.base import AUDIT_THREADS

    return AUDIT_THREADS


class AuditParams(BaseModel):
    data: str = Field("embedded:digits",
                      description="Parquet file/folder, saved HF dataset, image folder, cached hub name, or embedded:digits")
    truth: str | None = Field(None, description="truth.parquet of a simulated dataset, for metrics")
    trusted: str | None = Field(None, description="a small clean set (same classes), the reference rows of "
                                                  "AGPD and activation clustering")
    plugins: list[str] = Field(default_factory=list,
                               description="modules to import first (they may register more detectors)")
    detectors: list[str] = Field(default_factory=lambda: list(_default_detectors()))
    detector_options: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                         description="per detector: option -> value")
    out: str | None = Field(None, description="run directory; default runs/<run_id>")
    runs_root: str = "runs"
    device: str = "auto"
    seed: int = 0
    expected_dirty_rate: float = Field(0.1, gt=0, lt=1)
    threads: int = Field(default_factory=_audit_threads, ge=0,
                         description="torch threads while the detectors run, fixed so that the same data "
                                             "and seed give the same flags on any core count; 0 = torch's own "
                                             "(faster on many cores, the flags may then differ)")
    min_votes: int = Field(1, ge=1)
    image_column: str | None = None
    label_column: str = "label"
    split: str = "train"
    # caching, shards, scale-out (see docs/flows.md)
    cache: bool = Field(True, description="reuse cached scores (per dataset+config, or per row)")
    cache_dir: str | None = Field(None, description="score cache and shard store; default $VETSET_CACHE_DIR or the user cache dir")
    refresh_cache: bool = Field(False, description="recompute and overwrite cached scores")
    shard_size: int = Field(1024, ge=1, description="rows per scoring shard")
    shard_retries: int = Field(2, ge=0, description="retries of a failing shard before the run fails")
    task_runner: Literal["thread", "dask"] = "thread"
    dask_address: str | None = Field(None, description="scheduler address; none = a LocalCluster for the run")
    workers: int | None = Field(None, ge=1, description="threads, or LocalCluster workers (default 2)")
    alert_fraction: float | None = Field(None, gt=0, le=1,
                                         description="the completion event says alert when the verdict found dirt; "
                                                     "with this set, the flagged fraction must also reach it")
    emit_events: bool = True

    @field_validator("plugins")
    @classmethod
    def _import_plugins(cls, value: list[str]) -> list[str]:
        import importlib

        for module in value:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"plugin {module!r} cannot be imported: {exc}") from None
        return value

    @field_validator("detectors")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        import cleansers  # noqa: F401  (registers the detectors)
        from cleansers.base import DETECTORS

        if not value:
            raise ValueError("at least one detector is needed")
        unknown = [d for d in value if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS.names())}")
        if len(set(value)) != len(value):
            raise ValueError("a detector is named twice")
        return value

    @model_validator(mode="after")
    def _dask_address_needs_dask(self) -> "AuditParams":
        if self.dask_address and self.task_runner != "dask":
            raise ValueError("dask_address is given but task_runner is not dask")
        return self


class TrainParams(BaseModel):
    data: str = Field(description="training dataset (any source `vetset audit` reads)")
    out: str = Field(description="model directory to write (model.safetensors, config.json, metrics.json)")
    test: str | None = None
    model: str = "auto"
    preset: str = "auto"
    defense: str = "none"
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    device: str = "auto"
    seed: int = 0
    trigger: str | None = Field(None, description="trigger.json of a simulated attack, for ASR / RA")
    tta_flip: bool = False
    # defenses (trainers.defenses); curate-then-train's audit
    defense_options: dict[str, Any] = Field(default_factory=dict, description="options of the defense's Config")
    scores: str | None = Field(None, description="an audit's scores.parquet: curate drops its flagged rows (else the "
                               "audit runs first), abl unlearns them, pdb never draws them as defensive rows")
    detectors: list[str] = Field(default_factory=lambda: list(_default_detectors()),
                                 description="curate: the detectors of the audit run before training")
    detector_options: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                         description="curate: per detector: option -> value")
    expected_dirty_rate: float = Field(0.1, gt=0, lt=1)
    relabel: bool = Field(False, description="curate: relabel flagged rows with a confident suggestion, not drop")
    min_confidence: float = Field(0.0, ge=0, le=1, description="curate: least suggested_confidence to relabel")
    baseline_metrics: str | None = Field(None, description="an undefended run's metrics.json, for DER")
    processes: int = Field(1, ge=1, description="train in N processes through accelerate (one GPU each, or CPU "
                           "processes); batch_size is the global batch")

    @field_validator("defense")
    @classmethod
    def _known_defense(cls, value: str) -> str:
        from trainers.defenses import DEFENSES

        if value not in DEFENSES:
            raise ValueError(f"unknown defense {value!r}; available: {', '.join(DEFENSES.names())}")
        return value

    @field_validator("detectors")
    @classmethod
    def _known_detectors(cls, value: list[str]) -> list[str]:
        import cleansers  # noqa: F401  (registers the detectors)
        from cleansers.base import DETECTORS

        if not value:
            raise ValueError("at least one detector is needed")
        unknown = [d for d in value if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(DETECTORS.names())}")
        return value
