"""The event an audit emits when it completes, for automations and deployment triggers.

Event ``vetset.audit.completed``; resource ``vetset.dataset.<fingerprint>`` with the labels
``vetset.alert`` ("true" when the flagged fraction reached the audit's ``alert_fraction``)
and ``vetset.flow-run-id``; payload: fingerprint, rows, flagged, flagged_fraction,
alert_fraction, run_dir, run_id, data (the audited source). A deployment trigger matching
``vetset.alert: "true"`` starts curate-then-train (see serve.py and docs/flows.md): a
trigger can match labels but cannot compare numbers, so the threshold is applied here."""
from __future__ import annotations

from typing import Any

from prefect.events import emit_event

AUDIT_COMPLETED = "vetset.audit.completed"
RESOURCE_PREFIX = "vetset.dataset."


def audit_payload(*, fingerprint: str, rows: int, flagged: int, run_dir: str, run_id: str, data: str,
                  alert_fraction: float | None) -> dict[str, Any]:
    fraction = flagged / rows if rows else 0.0
    return {"fingerprint": fingerprint, "rows": rows, "flagged": flagged, "flagged_fraction": fraction,
            "alert_fraction": alert_fraction, "alert": alert_fraction is not None and fraction >= alert_fraction,
            "run_dir": run_dir, "run_id": run_id, "data": data}


def emit_audit_completed(payload: dict[str, Any], flow_run_id: str | None = None):
    resource = {"prefect.resource.id": f"{RESOURCE_PREFIX}{payload['fingerprint']}",
                "prefect.resource.name": f"dataset {payload['fingerprint'][:8]}",
                "vetset.alert": "true" if payload["alert"] else "false"}
    related = []
    if flow_run_id:
        resource["vetset.flow-run-id"] = str(flow_run_id)
        related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"})
    return emit_event(AUDIT_COMPLETED, resource=resource, payload=payload, related=related or None)
