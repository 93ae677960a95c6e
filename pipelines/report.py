"""The audit report: one self-contained HTML file (images inlined) and a Markdown twin."""
from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import pandas as pd
from PIL import Image

from .atomic import atomic_write_text
from .dataset import ImageDataset
from .outputs import RunPaths


def _fmt(v) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def _thumb(img: np.ndarray, scale: int = 3) -> str:
    h, w = img.shape[:2]
    im = Image.fromarray(img).resize((w * scale, h * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def summary_rows(manifest: dict) -> list[tuple[str, str]]:
    r = manifest["rows"]
    return [
        ("dataset", manifest["dataset"]["source"]),
        ("fingerprint", manifest["dataset"]["fingerprint"]),
        ("rows in / out", f"{r['in']} / {r['out']}"),
        ("flagged", f"{r['flagged']} ({100 * r['flagged'] / max(r['in'], 1):.2f}%)"),
        ("unreadable (kept, flagged)", str(r["unreadable"])),
        ("resized to the usual size", str(r["resized"])),
        ("converted to RGB", str(r["converted_to_rgb"])),
    ]


def metrics_rows(metrics: dict | None) -> list[list[str]]:
    if not metrics:
        return []
    rows = []
    for name, entry in metrics.get("detection", {}).items():
        a = entry["all"]
        rows.append([
            name, _fmt(a["tpr"]), _fmt(a["fpr"]), _fmt(a["precision"]), _fmt(a["f1"]), _fmt(a.get("auroc", float("nan"))),
            _fmt(entry.get("poisoned", {}).get("tpr", float("nan"))), _fmt(entry.get("noisy", {}).get("tpr", float("nan"))),
        ])
    return rows


METRIC_HEADER = ["detector", "TPR", "FPR", "precision", "F1", "AUROC", "poisoned TPR", "noisy TPR"]


def per_class(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows and flagged rows per given label, in class order."""
    g = frame.groupby("label", sort=True)
    out = pd.DataFrame({"class": g["label_name"].first(), "rows": g.size(), "flagged": g["flagged"].sum()})
    out["flagged %"] = (100 * out["flagged"] / out["rows"]).round(2)
    return out.reset_index(drop=True)


def _histogram_svg(frame: pd.DataFrame, bins: int = 40, width: int = 480, height: int = 120) -> str:
    score = frame["dirty_score"].to_numpy(np.float64)
    flagged = frame["flagged"].to_numpy(bool)
    edges = np.linspace(0, 1, bins + 1)
    h_clean, _ = np.histogram(score[~flagged], edges)
    h_flag, _ = np.histogram(score[flagged], edges)
    top = max(1, int((h_clean + h_flag).max()))
    bw = width / bins
    bars = []
    for i in range(bins):
        for count, base, colour in ((h_clean[i], 0, "#7a9cc6"), (h_flag[i], h_clean[i], "#d9534f")):
            if count:
                y = height - (base + count) / top * height
                bars.append(f'<rect x="{i * bw:.1f}" y="{y:.1f}" width="{bw - 1:.1f}" height="{count / top * height:.1f}" fill="{colour}"/>')
    return (f'<svg width="{width}" height="{height + 16}" role="img" aria-label="dirty score histogram">'
            + "".join(bars)
            + f'<text x="0" y="{height + 14}" font-size="11">0</text><text x="{width - 8}" y="{height + 14}" font-size="11">1</text>'
            + f'<line x1="{width / 2}" y1="0" x2="{width / 2}" y2="{height}" stroke="#333" stroke-dasharray="3"/></svg>')


def _html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def detector_rows(manifest: dict) -> list[list[str]]:
    """detector, rows flagged, seconds, and the detector's one-line finding (``info["finding"]``)."""
    return [[name, str(d.get("n_flagged", "")), _fmt(float(d.get("seconds", float("nan")))), str(d.get("finding", ""))]
            for name, d in manifest.get("detectors", {}).items()]


DETECTOR_HEADER = ["detector", "flagged", "seconds", "finding"]


def _round_robin(lists: list[list]) -> list:
    out: list = []
    for depth in range(max((len(x) for x in lists), default=0)):
        out += [x[depth] for x in lists if depth < len(x)]
    return out


def interleaved_flagged(frame: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """The flagged rows to show, so that no single detector, kind or class fills the grid:
    the verdict's kinds take turns (injected rows first, then wrong labels, then rows other
    detectors flagged, then unreadable rows); inside a kind, the given classes take turns,
    each dirtiest first."""
    flagged = frame[frame["flagged"]].sort_values("dirty_score", ascending=False, kind="stable")
    if flagged.empty:
        return flagged
    false = pd.Series(False, index=flagged.index)
    unreadable = flagged.get("is_unreadable", false).astype(bool)
    injected = flagged.get("is_backdoor", false).astype(bool) & ~unreadable
    wrong = flagged.get("is_label_issue", false).astype(bool) & ~injected & ~unreadable
    kind = pd.Series(2, index=flagged.index)
    kind[injected], kind[wrong], kind[unreadable] = 0, 1, 3
    per_kind = []
    for k in range(4):
        part = flagged[kind == k]
        per_kind.append(_round_robin([g.index.tolist() for _, g in part.groupby(part["label"].astype(str), sort=False)]))
    order = _round_robin([x for x in per_kind if x])
    return flagged.loc[order[:top_k]]


def verdict_rows(verdict) -> list[list[str]]:
    """Per class: rows, size vs the median, named as a backdoor target, the signals that
    fired, injected rows flagged, wrong labels flagged (top suggestions)."""
    rows = []
    for c in verdict.classes:
        fired = "; ".join(f"{s.name} {s.value:g}" for s in c.signals if s.fired)
        sugg = ", ".join(f"{k} {v}" for k, v in list(c.suggested.items())[:3])
        rows.append([c.class_name, str(c.rows), f"{c.size_ratio:.2f}x", "yes" if c.backdoor else "",
                     fired, str(c.injected_rows), f"{c.mislabelled_rows}" + (f" ({sugg})" if sugg else "")])
    return rows


VERDICT_HEADER = ["class", "rows", "vs median", "backdoor target", "signals that fired", "injected rows flagged",
                  "wrong labels flagged (suggested)"]


def render_report(ds: ImageDataset, frame: pd.DataFrame, manifest: dict, metrics: dict | None, paths: RunPaths,
                  verdict=None, top_k: int = 48) -> None:
    """``verdict``: the audit's :class:`pipelines.verdict.AuditVerdict` (its headline comes
    first, its per-class table replaces the plain one)."""
    flagged = interleaved_flagged(frame, top_k)
    cls = per_class(frame)
    cls_rows = cls.values.tolist()
    if verdict is not None:
        cls_header, cls_rows = VERDICT_HEADER, verdict_rows(verdict)
    else:
        cls_header = list(cls.columns)
    verdict_html = ""
    verdict_md: list[str] = []
    if verdict is not None:
        log = "".join(f"<li>{html.escape(f)}</li>" for f in verdict.findings) or "<li>no class had evidence</li>"
        verdict_html = (f'<h2>Verdict</h2><p id="verdict" class="{html.escape(verdict.status)}"><b>'
                        f"{html.escape(verdict.headline)}</b> (confidence: {html.escape(verdict.confidence)})</p>"
                        f"<details><summary>How it was decided</summary><ul>{log}</ul></details>")
        verdict_md = ["## Verdict", "", f"**{verdict.headline}** (confidence: {verdict.confidence})", ""]
        verdict_md += [f"- {f}" for f in verdict.findings] + [""]
    summary = summary_rows(manifest)
    det_rows = detector_rows(manifest)
    met = metrics_rows(metrics)

    cells = []
    for _, row in flagged.iterrows():
        i = int(row["index"])
        sugg = int(row["suggested_label"])
        sugg_txt = f" → {html.escape(ds.class_names[sugg])}?" if sugg >= 0 else ""
        cells.append(
            f'<figure><img src="data:image/png;base64,{_thumb(ds.images[i])}" alt="{html.escape(row["sample_id"])}">'
            f'<figcaption><b>{html.escape(row["label_name"])}</b>{sugg_txt}<br>{row["dirty_score"]:.3f}<br>'
            f'<small>{html.escape(row["reasons"])}</small><br><small>{html.escape(row["sample_id"])}</small></figcaption></figure>'
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vetset audit {html.escape(manifest['run_id'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}figure{{display:inline-block;margin:4px;width:110px;vertical-align:top;font-size:12px}}
figure img{{image-rendering:pixelated;width:96px;height:96px}}</style></head><body>
<h1>vetset audit</h1><p>run <code>{html.escape(manifest['run_id'])}</code>, {html.escape(manifest['created_at'])}</p>
{verdict_html}
<h2>Summary</h2>{_html_table(['', ''], [list(r) for r in summary])}
<h2>Detectors</h2>{_html_table(DETECTOR_HEADER, det_rows)}
{('<h2>Against the truth table</h2>' + _html_table(METRIC_HEADER, met)) if met else ''}
<h2>Dirty score</h2><p>Rows at or above 0.5 (dashed line) are flagged; red = flagged.</p>{_histogram_svg(frame)}
<h2>Per class</h2>{_html_table(cls_header, cls_rows)}
<h2>{len(flagged)} flagged rows</h2><p>Taken in turn from each (reason, class) group, dirtiest first, so one detector cannot fill the grid. Given label in bold, suggested label after the arrow, dirty score, the detectors that fired.</p>
<div>{''.join(cells) or '<p>No row was flagged.</p>'}</div>
</body></html>"""
    atomic_write_text(page, paths.report_html)

    md = [f"# vetset audit `{manifest['run_id']}`", "", *verdict_md, "## Summary", "", _md_table(["", ""], [list(r) for r in summary]), "",
          "## Detectors", "", _md_table(DETECTOR_HEADER, det_rows), ""]
    if met:
        md += ["## Against the truth table", "", _md_table(METRIC_HEADER, met), ""]
    md += ["## Per class", "", _md_table(cls_header, cls_rows), "", f"## {min(len(flagged), 20)} flagged rows", "",
           _md_table(["sample_id", "label", "dirty_score", "reasons", "suggested"],
                     [[r.sample_id, r.label_name, f"{r.dirty_score:.3f}", r.reasons,
                       ds.class_names[r.suggested_label] if r.suggested_label >= 0 else ""]
                      for r in flagged.head(20).itertuples()]), ""]
    atomic_write_text("\n".join(md), paths.report_md)
