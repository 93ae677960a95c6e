"""Serve vetset's flows as Prefect deployments (``flow.to_deployment`` + ``prefect.serve``):
cron schedules and parameters from the command line or a YAML config, and the alert trigger
that starts curate-then-train when an audit's flagged fraction reaches its ``alert_fraction``.

Config file (YAML)::

    deployments:
      - flow: audit                    # audit | train | curate-then-train | purify
        name: nightly-audit            # default vetset-<flow>
        cron: ["0 3 * * *"]            # any number of cron strings (or one string)
        timezone: Europe/Berlin        # optional
        parameters: {data: /data/train.parquet, detectors: [abl, outlier]}   # the flow's params model
      - flow: curate-then-train
        on_audit_alert: true           # run on each vetset.audit.completed event with vetset.alert = "true"
        parameters: {out: "{{ event.payload.run_dir }}/curated", epochs: 20}

Parameters are the fields of the flow's pydantic model (AuditParams, TrainParams); they are
validated before anything is served. In a triggered deployment, ``{{ event.payload.X }}``
templates are filled by Prefect from the event (see flows/events.py for the payload); a
curate-then-train trigger gets ``data``, ``scores`` and ``out`` (``<audit run dir>/curated-model``)
from the audit unless you set them.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from pipelines.errors import VetsetError

from .events import AUDIT_COMPLETED, RESOURCE_PREFIX

# flow name -> (module, attribute); a flow whose module is not there (yet) cannot be served
FLOWS: dict[str, tuple[str, str]] = {
    "audit": ("flows.audit", "audit_flow"),
    "train": ("flows.train", "train_flow"),
    "curate-then-train": ("flows.curate_train", "curate_train_flow"),
    "purify": ("flows.purify", "purify_flow"),
}
ALERT_DEFAULTS = {"data": "{{ event.payload.data }}", "scores": "{{ event.payload.run_dir }}/scores.parquet",
                  "out": "{{ event.payload.run_dir }}/curated-model"}


class DeploymentSpec(BaseModel):
    flow: str
    name: str | None = None
    cron: list[str] = Field(default_factory=list)
    timezone: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    on_audit_alert: bool = False
    description: str | None = None

    @field_validator("flow")
    @classmethod
    def _known_flow(cls, value: str) -> str:
        if value not in FLOWS:
            raise ValueError(f"unknown flow {value!r}; vetset serves {', '.join(FLOWS)}")
        return value

    @field_validator("cron", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: list[str]) -> list[str]:
        from prefect.client.schemas.schedules import CronSchedule

        for expr in value:
            try:
                CronSchedule(cron=expr)
            except ValidationError:
                raise ValueError(f"not a cron expression: {expr!r}") from None
        return value

    @property
    def deployment_name(self) -> str:
        return self.name or f"vetset-{self.flow}"


class ServeConfig(BaseModel):
    deployments: list[DeploymentSpec]


def load_flow(name: str):
    module, attr = FLOWS[name]
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise VetsetError(f"flow {name!r} is not available here ({exc})") from None


def params_model(flow: Any) -> type[BaseModel]:
    import inspect

    param = inspect.signature(flow.fn).parameters["params"]
    model = param.annotation
    if isinstance(model, str):  # postponed annotations
        model = flow.fn.__globals__[model]
    return model


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def deployment_parameters(spec: DeploymentSpec, flow: Any) -> dict[str, Any]:
    """The deployment's ``{"params": {...}}``, validated against the flow's model (template
    strings stand in for values only the event will give)."""
    values = dict(spec.parameters)
    if spec.on_audit_alert and spec.flow != "audit":
        for key, template in ALERT_DEFAULTS.items():
            values.setdefault(key, template)
    model = params_model(flow)
    concrete = {k: v for k, v in values.items() if not _templated(v)}
    try:
        if len(concrete) == len(values):
            model(**values)
        else:  # validate what is concrete; templated fields only need to exist
            unknown = [k for k in values if k not in model.model_fields]
            if unknown:
                raise VetsetError(f"{spec.deployment_name}: unknown parameter(s) {', '.join(unknown)}")
            for key, value in concrete.items():
                model.__pydantic_validator__.validate_assignment(model.model_construct(), key, value)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise VetsetError(f"{spec.deployment_name}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    return {"params": values}


def alert_trigger(parameters: dict[str, Any]):
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(
        name="vetset audit alert",
        expect={AUDIT_COMPLETED},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*", "vetset.alert": "true"},
        parameters=parameters,
    )


def build_deployments(config: ServeConfig) -> list[Any]:
    from prefect.schedules import Cron

    out = []
    for spec in config.deployments:
        flow = load_flow(spec.flow)
        parameters = deployment_parameters(spec, flow)
        schedules = [Cron(expr, timezone=spec.timezone) if spec.timezone else Cron(expr) for expr in spec.cron]
        out.append(flow.to_deployment(
            name=spec.deployment_name, schedules=schedules or None, parameters=parameters,
            triggers=[alert_trigger(parameters)] if spec.on_audit_alert else None,
            tags=["vetset", *spec.tags], description=spec.description or f"vetset {spec.flow}",
        ))
    return out


def read_config(path: str | Path) -> ServeConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise VetsetError(f"{path}: no such serve config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return ServeConfig(**raw)
    except yaml.YAMLError as exc:
        raise VetsetError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        raise VetsetError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except TypeError as exc:
        raise VetsetError(f"{path}: expected a mapping with 'deployments' ({exc})") from None


def serve(config: ServeConfig, limit: int | None = None) -> None:
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(config), limit=limit)
