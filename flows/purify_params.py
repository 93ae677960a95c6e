"""Parameters of the ``purify`` flow (validated pydantic model)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator


class PurifyParams(BaseModel):
    model: str | None = Field(None, description="vetset model directory (config.json + model.safetensors)")
    arch: str | None = Field(None, description="registered architecture, with state_dict instead of model")
    state_dict: str | None = Field(None, description=".safetensors or torch state dict (read with weights_only)")
    clean: str = Field(description="the small clean set (any source `vetset audit` reads)")
    method: str = Field(description="sau, npd, ftsam, tsbd, awm, ft, fp, nc, strip, or auto (cheapest first, "
                                    "until the residual estimate finds no backdoor)")
    out: str = Field(description="model directory to write (model, config.json, metrics.json, report.md)")
    test: str | None = Field(None, description="test set for CA (and ASR / RA / DER with trigger)")
    trigger: str | None = Field(None, description="trigger.json of a simulated attack")
    options: dict[str, Any] = Field(default_factory=dict, description="method option -> value")
    n_clean: int | None = Field(None, ge=1, description="use a class-balanced subset of this many clean rows")
    device: str = "auto"
    profile: Literal["auto", "cpu", "published"] = Field(
        "auto", description="the methods' schedules: published (the papers' GPU defaults), cpu (steps that fit ~5 "
                            "minutes on 2 cores), auto (cpu on a CPU device); options override either")
    seed: int = 0
    min_rows_per_class: int = Field(5, ge=1, description="least readable clean rows of each class")
    allow_missing_classes: bool = Field(False, description="go on when the clean set lacks some of the model's classes")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of the clean set kept out to check clean accuracy")
    max_ca_drop: float = Field(0.10, ge=0, le=1, description="largest held-out clean-accuracy drop before refusing, "
                                                                     "beyond one standard error of the paired drop")
    force: bool = Field(False, description="save even when the clean accuracy collapsed")
    residual: bool = Field(True, description="trigger-free residual-backdoor estimate before and after")
    residual_rows: int = Field(200, ge=10, description="clean rows the residual estimate reverses triggers on")
    residual_steps: int = Field(300, ge=1, description="Adam steps per class of the residual estimate's reversal")
    audit: str | None = Field(None, description="an audit run folder (or its verdict.json) of the model's training data: "
                                                "the class it named is the backdoor's target for NPD's attack")

    @model_validator(mode="after")
    def _one_source(self) -> "PurifyParams":
        if self.model is None and (self.arch is None or self.state_dict is None):
            raise ValueError("give a model directory, or arch together with state_dict")
        if self.model is not None and self.state_dict is not None:
            raise ValueError("give a model directory or a state dict, not both")
        if self.trigger is not None and self.test is None:
            raise ValueError("trigger needs test (ASR is measured on the triggered test set)")
        return self
