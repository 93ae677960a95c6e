"""Flow parameters as validated pydantic models, with defaults that work."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator


class AuditParams(BaseModel):
    data: str = Field(description="Parquet file/folder, saved HF dataset, image folder, cached hub name, or embedded:digits")
    truth: str | None = Field(None, description="truth.parquet of a simulated dataset, for metrics")
    detectors: list[str] = Field(default_factory=lambda: ["abl"])
    detector_options: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                         description="per detector: option -> value")
    out: str | None = Field(None, description="run directory; default runs/<run_id>")
    runs_root: str = "runs"
    device: str = "auto"
    seed: int = 0
    expected_dirty_rate: float = Field(0.1, gt=0, lt=1)
    min_votes: int = Field(1, ge=1)
    image_column: str | None = None
    label_column: str = "label"
    split: str = "train"

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
        return value


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
