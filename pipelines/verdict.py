"""The audit's decision as data: what is wrong with the dataset, where, and how sure.

An :class:`AuditVerdict` is computed once per audit (by :func:`cleansers.verdict.decide`),
written to ``verdict.json``, and read by the report, the CLI summary and the completion
event, so that all three say the same thing. It lives here, with the other data types
several packages read; the logic that computes it lives in ``cleansers/`` (the report never
imports a detector).

Per class it holds the signals that were checked (each with its number, the threshold it
was held against and whether it fired), whether the class was named as holding injected
(backdoor-poisoned) rows, how many rows were flagged as injected, and how many rows of that
given label were flagged as wrong labels with their suggested labels. ``findings`` is the
decision log in plain sentences; ``checked`` says what was looked at, so that "no dirt
found" always comes with what was checked.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_json
from .errors import DataError

VERDICT = "verdict.json"
STATUSES = ("dirt_found", "clean")
CONFIDENCE = ("high", "medium", "low")


@dataclass
class Signal:
    """One number that was checked, against what, and whether it counted as evidence."""

    name: str
    value: float
    threshold: float | None = None
    fired: bool = False
    detail: str = ""


@dataclass
class ClassVerdict:
    class_id: int
    class_name: str
    rows: int
    size_ratio: float  # rows / the median rows per class
    backdoor: bool = False  # named as a class holding injected rows
    evidence: float = 0.0  # the combined backdoor evidence (see cleansers.verdict)
    signals: list[Signal] = field(default_factory=list)
    injected_rows: int = 0  # rows of this class flagged as injected
    injected_estimate: int | None = None  # what the class-size excess implies, when there is one
    mislabelled_rows: int = 0  # rows with this given label flagged as wrong labels
    suggested: dict[str, int] = field(default_factory=dict)  # suggested label -> rows, among them
    flagged_rows: int = 0  # every flagged row of this given label, any reason


@dataclass
class AuditVerdict:
    status: str  # "dirt_found" | "clean"
    headline: str  # one or two sentences for people
    confidence: str  # "high" | "medium" | "low"
    rows: int
    flagged: int
    suspected_poisoned: int
    suspected_mislabelled: int
    unreadable: int
    backdoor_classes: list[str] = field(default_factory=list)
    classes: list[ClassVerdict] = field(default_factory=list)
    confusions: list[dict[str, Any]] = field(default_factory=list)  # [{"given", "suggested", "rows"}]
    checked: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    detectors: dict[str, str] = field(default_factory=dict)  # detector -> its one-line finding
    version: int = 1

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"verdict status must be one of {STATUSES}, got {self.status!r}")
        if self.confidence not in CONFIDENCE:
            raise ValueError(f"verdict confidence must be one of {CONFIDENCE}, got {self.confidence!r}")

    @property
    def dirt_found(self) -> bool:
        return self.status == "dirt_found"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AuditVerdict":
        d = dict(d)
        d["classes"] = [ClassVerdict(**{**c, "signals": [Signal(**s) for s in c.get("signals", [])]})
                        for c in d.get("classes", [])]
        return cls(**d)

    def event_summary(self) -> dict[str, Any]:
        """What the completion event carries (small: no per-class signal lists)."""
        return {"status": self.status, "headline": self.headline, "confidence": self.confidence,
                "backdoor_classes": list(self.backdoor_classes), "suspected_poisoned": self.suspected_poisoned,
                "suspected_mislabelled": self.suspected_mislabelled, "unreadable": self.unreadable,
                "flagged": self.flagged, "rows": self.rows}


def write_verdict(verdict: AuditVerdict, path: str | Path) -> None:
    atomic_write_json(verdict.to_dict(), Path(path))


def read_verdict(path: str | Path) -> AuditVerdict:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such verdict file")
    try:
        return AuditVerdict.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{path}: not a vetset verdict ({str(exc).splitlines()[0]})") from None
