"""The audit report: one self-contained HTML file (images inlined) and a Markdown twin."""
from __future__ import annotations

import base64
import html
import io
import json
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
        ("dataset", manifest["dataset"]["source"] or "(in memory, not read from a file)"),
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


def _img(b64: str | None, alt: str, ident: str) -> str:
    if not b64:
        return ""
    return f'<img class="plot" id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _row_details(row, detectors: list[str], class_names: list[str]) -> str:
    """One tile's row as JSON for the click-through panel: every detector's score and flag."""
    sugg = int(row["suggested_label"])
    d = {"sample_id": str(row["sample_id"]), "index": int(row["index"]), "given label": str(row["label_name"]),
         "suggested label": class_names[sugg] if sugg >= 0 else "", "dirty score": round(float(row["dirty_score"]), 4),
         "reasons": str(row["reasons"]), "flagged as injected": bool(row.get("is_backdoor", False)),
         "flagged as wrong label": bool(row.get("is_label_issue", False))}
    for name in detectors:
        v = float(row[f"{name}_score"])
        d[f"{name} score"] = None if math.isnan(v) else round(v, 4)
        d[f"{name} flag"] = bool(row[f"{name}_flag"])
    return html.escape(json.dumps(d), quote=True)


def detectors_in(frame: pd.DataFrame) -> list[str]:
    return [c[: -len("_score")] for c in frame.columns
            if c.endswith("_score") and c != "dirty_score" and f"{c[: -len('_score')]}_flag" in frame.columns]


_SCRIPT = """<script>
document.querySelectorAll('figure.tile').forEach(function (tile) {
  tile.addEventListener('click', function () {
    var row = JSON.parse(tile.dataset.row);
    var panel = document.getElementById('row-detail');
    panel.replaceChildren();
    var head = document.createElement('h3'); head.textContent = row.sample_id; panel.appendChild(head);
    var table = document.createElement('table');
    Object.keys(row).forEach(function (k) {
      var tr = table.insertRow(), th = document.createElement('th');
      th.textContent = k; tr.appendChild(th);
      tr.insertCell().textContent = row[k] === null ? 'n/a' : String(row[k]);
    });
    panel.appendChild(table);
    panel.hidden = false;
    document.querySelectorAll('figure.tile.selected').forEach(function (t) { t.classList.remove('selected'); });
    tile.classList.add('selected');
  });
});
</script>"""

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
#verdict{font-size:1.15em;padding:.7em 1em;border-radius:6px}#verdict.dirt_found{background:#fbe3e2}#verdict.clean{background:#e3f4e3}
img.plot{max-width:100%;display:block;margin:.5em 0}
figure.tile{display:inline-block;margin:4px;width:110px;vertical-align:top;font-size:12px;cursor:pointer;border:2px solid transparent}
figure.tile.selected{border-color:#d9534f}figure.tile img{image-rendering:pixelated;width:96px;height:96px}
#row-detail{position:sticky;top:0;background:#fff;border:1px solid #999;padding:.5em;font-size:12px;max-height:45vh;overflow:auto}"""


def render_report(ds: ImageDataset, frame: pd.DataFrame, manifest: dict, metrics: dict | None, paths: RunPaths,
                  verdict=None, top_k: int = 48, truth: pd.DataFrame | None = None) -> None:
    """report.html (self-contained: figures and tiles are inlined PNGs) and report.md.

    ``verdict``: the audit's :class:`pipelines.verdict.AuditVerdict` (its headline comes
    first, its per-class table replaces the plain one). ``truth``: the simulation's truth
    table, when there is one (ROC / precision-recall curves, scores split by kind)."""
    from . import plots
    from .metrics import align_truth

    detectors = detectors_in(frame)
    aligned = align_truth(frame, truth) if truth is not None else None
    flagged = interleaved_flagged(frame, top_k)
    cls = per_class(frame)
    cls_rows = cls.values.tolist()
    if verdict is not None:
        cls_header, cls_rows = VERDICT_HEADER, verdict_rows(verdict)
    else:
        cls_header = list(cls.columns)
    targets = set(verdict.backdoor_classes) if verdict is not None else set()
    verdict_html = ""
    verdict_md: list[str] = []
    if verdict is not None:
        log = "".join(f"<li>{html.escape(f)}</li>" for f in verdict.findings) or "<li>no class had evidence</li>"
        checked = "".join(f"<li>{html.escape(c)}</li>" for c in verdict.checked)
        verdict_html = (f'<section id="verdict-section"><h2>Verdict</h2><p id="verdict" class="{html.escape(verdict.status)}"><b>'
                        f"{html.escape(verdict.headline)}</b> (confidence: {html.escape(verdict.confidence)})</p>"
                        f"<details><summary>How it was decided</summary><ul>{log}</ul></details>"
                        f"<details><summary>What was checked</summary><ul>{checked}</ul></details></section>")
        verdict_md = ["## Verdict", "", f"**{verdict.headline}** (confidence: {verdict.confidence})", ""]
        verdict_md += [f"- {f}" for f in verdict.findings] + [""]
    summary = summary_rows(manifest)
    det_rows = detector_rows(manifest)
    met = metrics_rows(metrics)

    sizes_png = plots.class_sizes(cls["class"].astype(str).tolist(), cls["rows"].to_numpy(), cls["flagged"].to_numpy(),
                                  targets)
    dist_png = plots.score_distributions(frame, detectors, aligned)
    roc_png, areas = plots.roc_pr(frame, detectors, aligned) if aligned is not None else (None, {})
    regions = manifest.get("detectors", {}).get("sentinet", {}).get("regions_per_class", {})
    trigger_html = []
    for k, name in enumerate(ds.class_names):
        if name not in targets:
            continue
        in_k = frame["label"].to_numpy() == k
        mark = frame["is_backdoor"].to_numpy(bool)[in_k] if "is_backdoor" in frame else frame["flagged"].to_numpy(bool)[in_k]
        png = plots.trigger_panel(ds.images[in_k], mark, name, regions.get(name))
        trigger_html.append(_img(png, f"trigger panel for class {name}", f"trigger-{k}")
                            or f"<p>class {html.escape(name)}: every row or no row flagged, nothing to compare</p>")
    area_rows = [[kind, name, f"{auc:.3f}", f"{ap:.3f}"] for kind, d in areas.items() for name, (auc, ap) in d.items()]

    cells = []
    for _, row in flagged.iterrows():
        i = int(row["index"])
        sugg = int(row["suggested_label"])
        sugg_txt = f" → {html.escape(ds.class_names[sugg])}?" if sugg >= 0 else ""
        cells.append(
            f'<figure class="tile" data-row="{_row_details(row, detectors, ds.class_names)}">'
            f'<img src="data:image/png;base64,{_thumb(ds.images[i])}" alt="{html.escape(row["sample_id"])}">'
            f'<figcaption><b>{html.escape(row["label_name"])}</b>{sugg_txt}<br>{row["dirty_score"]:.3f}<br>'
            f'<small>{html.escape(row["reasons"])}</small><br><small>{html.escape(row["sample_id"])}</small></figcaption></figure>'
        )
    truth_html = ""
    if met:
        truth_html = ('<section id="truth"><h2>Against the truth table</h2>' + _html_table(METRIC_HEADER, met)
                      + _img(roc_png, "ROC and precision-recall curves", "roc-pr")
                      + (_html_table(["rows", "score", "AUROC", "AP"], area_rows) if area_rows else "") + "</section>")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vetset audit {html.escape(manifest['run_id'])}</title>
<style>{_STYLE}</style></head><body>
<h1>vetset audit</h1><p>run <code>{html.escape(manifest['run_id'])}</code>, {html.escape(manifest['created_at'])},
{html.escape(str(manifest['rows']['in']))} rows of {html.escape(manifest['dataset']['source'])}</p>
{verdict_html}
<section id="classes"><h2>Classes</h2><p>Rows per given label; the dashed line is the median class, red the excess over it
(injected rows relabelled into a class make it larger than the others). Beside it, each class's flagged share.</p>
{_img(sizes_png, "class sizes", "class-sizes")}{_html_table(cls_header, cls_rows)}</section>
{('<section id="trigger"><h2>What the trigger looks like</h2><p>For each class named as a target: the mean of the rows flagged as injected, the mean of the others, and their difference (a patch, a key image or a wash shows up there).</p>' + ''.join(trigger_html) + '</section>') if trigger_html else ''}
<section id="detectors"><h2>Detectors</h2>{_html_table(DETECTOR_HEADER, det_rows)}
<p>Each detector's own score (not the fused rank); the dashed line is the lowest score it flagged.</p>
{_img(dist_png, "score distributions", "score-distributions")}</section>
{truth_html}
<section id="summary"><h2>Summary</h2>{_html_table(['', ''], [list(r) for r in summary])}</section>
<section id="grid"><h2>{len(flagged)} flagged rows</h2><p>Taken in turn from each kind (injected, wrong label, other) and class, dirtiest first, so one detector cannot fill the grid. Given label in bold, suggested label after the arrow, dirty score, the detectors that fired. Click a tile for its row's scores.</p>
<div id="row-detail" hidden></div>
<div>{''.join(cells) or '<p>No row was flagged.</p>'}</div></section>
{_SCRIPT}
</body></html>"""
    atomic_write_text(page, paths.report_html)

    md = [f"# vetset audit `{manifest['run_id']}`", "", *verdict_md, "## Summary", "", _md_table(["", ""], [list(r) for r in summary]), "",
          "## Detectors", "", _md_table(DETECTOR_HEADER, det_rows), ""]
    if met:
        md += ["## Against the truth table", "", _md_table(METRIC_HEADER, met), ""]
        if area_rows:
            md += [_md_table(["rows", "score", "AUROC", "AP"], area_rows), ""]
    md += ["## Per class", "", _md_table(cls_header, cls_rows), "", f"## {min(len(flagged), 20)} flagged rows", "",
           _md_table(["sample_id", "label", "dirty_score", "reasons", "suggested"],
                     [[r.sample_id, r.label_name, f"{r.dirty_score:.3f}", r.reasons,
                       ds.class_names[r.suggested_label] if r.suggested_label >= 0 else ""]
                      for r in flagged.head(20).itertuples()]), ""]
    atomic_write_text("\n".join(md), paths.report_md)
