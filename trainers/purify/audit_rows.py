"""The audit's injected rows as a residual-backdoor measure: the share of the rows an audit
of the training data found injected into a class that a model still calls that class.

For a dirty-label attack (the named class holds more rows than the median class: other
classes' images, triggered and relabelled) those rows are the trigger on images that are
not of the target, so the share a model calls the target is its attack success rate on its
own training poison, no trigger file needed, and it sees blends and warps the trigger
reversal of purify/residual.py cannot. Measured on the CIFAR-10 residual net with Blended
at 10% (the simulator's injected rows standing in for the audit's; docs/benchmarks.md,
"The audit's injected rows"): before purifying 100% (test ASR 92.6-93.6%); after TSBD
5.5 / 5.8% (test ASR 5.6 / 7.9%), NPD 4.0 / 6.4% (4.3 / 8.0%), plain fine-tuning 10.7 /
27.9% (12.7 / 30.4%). Where a model memorised its training rows the share errs high: a
tiny digits net purified by NPD (its weights frozen) still called 91% of them the target at
a test ASR of 17% (tests/test_purify.py). So it is read as "may still be there", and
``--method auto`` takes it as one more reason to try the next method, never as proof of
removal.

For a clean-label attack (no excess: the class's own images carry the trigger) the rows
are the target's images, which any model calls the target: no measure, and it says so.
The rows come from the audited data itself (the audit's manifest names its source and
fingerprint): data that changed since the audit, or that cannot be read, gives no measure
and a note, never a wrong number.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import VetsetError

# a model that still calls more than this share of the audit's injected rows the target keeps
# the backdoor (the per-method bar of issue 19 is ASR <= 10%)
EVIDENCE_ABOVE = 0.10


@dataclass
class AuditRows:
    images: np.ndarray  # (n, H, W, C) uint8: the audit's injected rows of the named class
    target: int
    class_name: str
    source: str


def _run_dir(audit: str | os.PathLike) -> Path:
    path = Path(audit)
    return path if path.is_dir() else path.parent


def _excess_fired(verdict, class_name: str) -> bool:
    for cls in verdict.classes:
        if str(cls.class_name) == class_name:
            return any(s.name == "class_size" and s.fired for s in cls.signals)
    return False


def load_audit_rows(audit: str | os.PathLike | None, target: int | None,
                    class_names) -> tuple[AuditRows | None, str | None]:
    """The rows the audit flagged as injected into ``target`` (the class it named), read from
    the audited data; (None, why) when there is no such measure, (None, None) without an audit."""
    from pipelines.loaders import load_dataset
    from pipelines.outputs import MANIFEST, SCORES
    from pipelines.verdict import VERDICT, read_verdict

    if audit is None:
        return None, None
    if target is None:
        return None, "the audit named no single class"
    run = _run_dir(audit)
    name = str(list(class_names)[target])
    verdict = read_verdict(run / VERDICT)
    if not _excess_fired(verdict, name):
        return None, (f"class {name} holds no rows above the median class (a clean-label attack poisons the class's "
                      f"own images, which any model calls {name}): the audit's rows cannot measure it")
    try:
        manifest = json.loads((run / MANIFEST).read_text())
        source, fingerprint = manifest["dataset"]["source"], manifest["dataset"]["fingerprint"]
        scores = pd.read_parquet(run / SCORES, columns=["index", "label", "is_backdoor", "is_unreadable"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"the audit's {MANIFEST} or {SCORES} cannot be read ({type(e).__name__})"
    try:
        data = load_dataset(source)
    except (VetsetError, OSError, ValueError) as e:
        return None, f"the audited data {source} cannot be read now ({str(e).splitlines()[0][:120]})"
    if data.fingerprint != fingerprint:
        return None, f"the audited data {source} changed since the audit (fingerprint differs)"
    pick = scores["is_backdoor"].to_numpy(bool) & (scores["label"].to_numpy() == target) & \
        ~scores["is_unreadable"].to_numpy(bool)
    index = scores["index"].to_numpy()[pick]
    if len(index) == 0 or index.max() >= len(data):
        return None, f"the audit flagged no readable rows of class {name}"
    return AuditRows(np.ascontiguousarray(data.images[index]), int(target), name, str(source)), None


def target_share(model, rows: AuditRows, device) -> float:
    """The share of the audit's injected rows that ``model`` classifies as their class."""
    from trainers.loop import predict_logits

    return float((predict_logits(model, rows.images, device=device).argmax(1) == rows.target).mean())


def audit_rows_summary(before: float, after: float, rows: AuditRows) -> dict:
    """metrics.json's ``audit_rows``: the shares before / after and whether evidence remains."""
    evidence = after > EVIDENCE_ABOVE
    summary = (f"the audit's {len(rows.images)} rows injected into class {rows.class_name}: put in that class "
               f"{before:.1%} before, {after:.1%} after")
    return {"rows": int(len(rows.images)), "class": rows.class_name, "source": rows.source,
            "before": round(before, 4), "after": round(after, 4), "evidence_above": EVIDENCE_ABOVE,
            "evidence": bool(evidence), "summary": summary,
            "warning": (f"the purified model still puts {after:.1%} of the {len(rows.images)} rows the audit found "
                        f"injected into class {rows.class_name} in that class (over {EVIDENCE_ABOVE:.0%}): the "
                        f"backdoor may still be there (or the model memorised those rows in training)"
                        if evidence else None)}
