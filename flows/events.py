"""The event an audit emits when it completes, for automations and deployment triggers.

Event ``vetset.audit.completed``; resource ``vetset.dataset.<fingerprint>`` with the labels
``vetset.alert`` ("true" when the audit's verdict found dirt, and, when the audit has an
``alert_fraction``, the flagged fraction also reached it), ``vetset.verdict`` (the
verdict's status) and ``vetset.flow-run-id``; payload: fingerprint, rows, flagged,
flagged_fraction, alert_fraction, alert, run_dir, run_id, data (the audited source) and
``verdict`` (status, headline, confidence, backdoor classes, suspected poisoned /
mislabelled / unreadable rows). A deployment trigger matching ``vetset.alert: "true"``
starts curate-then-train (see serve.py and docs/flows.md): a trigger can match labels but
cannot compare numbers, so the decision is taken here."""
from __future__ import annotations

from typing import Any

from prefect.events import emit_event

AUDIT_COMPLETED = "vetset.audit.completed"
RESOURCE_PREFIX = "vetset.dataset."


def audit_payload(*, fingerprint: str, rows: int, flagged: int, run_dir: str, run_id: str, data: str,
                  alert_fraction: float | None, verdict: dict[str, Any] | None = None) -> dict[str, Any]:
    """``verdict``: :meth:`AuditVerdict.event_summary`. Without one (an old caller), the alert
    falls back to the flagged fraction alone."""
    fraction = flagged / rows if rows else 0.0
    reached = alert_fraction is None or fraction >= alert_fraction
    if verdict is not None:
        alert = verdict.get("status") == "dirt_found" and reached
    else:
        alert = alert_fraction is not None and fraction >= alert_fraction
    return {"fingerprint": fingerprint, "rows": rows, "flagged": flagged, "flagged_fraction": fraction,
            "alert_fraction": alert_fraction, "alert": bool(alert), "run_dir": run_dir, "run_id": run_id, "data": data,
            "verdict": verdict}


def emit_audit_completed(payload: dict[str, Any], flow_run_id: str | None = None):
    resource = {"prefect.resource.id": f"{RESOURCE_PREFIX}{payload['fingerprint']}",
                "prefect.resource.name": f"dataset {payload['fingerprint'][:8]}",
                "vetset.alert": "true" if payload["alert"] else "false",
                "vetset.verdict": str((payload.get("verdict") or {}).get("status", "unknown"))}
    related = []
    if flow_run_id:
        resource["vetset.flow-run-id"] = str(flow_run_id)
        related.append({"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"})
    return emit_event(AUDIT_COMPLETED, resource=resource, payload=payload, related=related or None)
