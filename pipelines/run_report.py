"""report.html for train and purify runs (the audit's is :mod:`pipelines.report`): what was
run, CA / ASR / RA against the undefended baseline or the model before purification, the
training curves per epoch and stage, the rows an in-training defense isolated or dropped,
and the purifier's residual-backdoor estimate. One self-contained file built from the run's
metrics.json (figures inlined by :mod:`pipelines.plots`).
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any


from .atomic import atomic_write_text
from .dataset import ImageDataset

REPORT_HTML = "report.html"

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
img.plot{max-width:100%;display:block;margin:.5em 0}.warn{background:#fbe3e2;padding:.5em 1em;border-radius:6px}
figure.tile{display:inline-block;margin:4px;width:104px;font-size:11px;vertical-align:top}
figure.tile img{image-rendering:pixelated;width:96px;height:96px}"""


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) or math.isnan(float(x)) else f"{100 * float(x):.2f}%"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    if not any(header):
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><tbody>{body}</tbody></table>"
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(b64: str | None, ident: str, alt: str) -> str:
    return f'<img class="plot" id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _rows_grid(ds: ImageDataset | None, ids: list[str], title: str, note: str, limit: int = 40) -> str:
    if not ids:
        return ""
    if ds is None:
        return f'<section id="rows"><h2>{html.escape(title)}</h2>{note}</section>'
    from .report import _thumb

    where = {s: i for i, s in enumerate(ds.sample_ids.astype(str))}
    idx = [where[s] for s in ids[:limit] if s in where]
    tiles = "".join(f'<figure class="tile"><img src="data:image/png;base64,{_thumb(ds.images[i])}" '
                    f'alt="{html.escape(ds.sample_ids[i])}"><figcaption>{html.escape(ds.class_names[ds.labels[i]])}'
                    f"<br><small>{html.escape(str(ds.sample_ids[i]))}</small></figcaption></figure>" for i in idx)
    return (f'<section id="rows"><h2>{html.escape(title)}</h2>{note}<p>The first {len(idx)} of {len(ids)}.</p>'
            f"{tiles}</section>")


def _truth_share(ids: list[str], truth) -> str:
    """How many of the isolated / dropped rows the truth table calls poisoned or noisy."""
    if truth is None or not ids:
        return ""
    t = truth.set_index("sample_id")
    known = [s for s in ids if s in t.index]
    if not known:
        return ""
    sub = t.loc[known]
    p, nz = int(sub["is_poisoned"].sum()), int(sub["is_noisy"].sum())
    total_p = int(t["is_poisoned"].sum())
    return (f"<p>Against the truth table: {p} of them poisoned (of {total_p} poisoned rows, "
            f"{p / max(total_p, 1):.0%}), {nz} noisy, {len(known) - p - nz} clean.</p>")


def render_train_report(metrics: dict, out: str | Path, train_ds: ImageDataset | None = None, truth=None) -> Path:
    """``out``/report.html for a training run (metrics.json's content in ``metrics``)."""
    from . import plots

    rows = [["this run (" + str(metrics.get("defense", "none")) + ")", _pct(metrics.get("clean_acc")),
             _pct(metrics.get("asr")), _pct(metrics.get("ra"))]]
    base = metrics.get("baseline")
    if base:
        rows.insert(0, [f"undefended baseline ({base.get('defense') or 'none'})", _pct(base.get("clean_acc")),
                        _pct(base.get("asr")), _pct(base.get("ra"))])
    der = f"<p>DER against the baseline: {metrics['der']:.4f}</p>" if isinstance(metrics.get("der"), float) else ""
    if "clean_acc" not in metrics:
        der += "<p>No test set was given, so no CA / ASR (vetset train --test).</p>"
    history = metrics.get("history") or []
    stages = sorted({h.get("stage") for h in history if h.get("stage")}, key=[h.get("stage") for h in history].index)
    curves = _img(plots.training_curves(history, "Training"), "training-curves", "training curves")
    stage_note = f"<p>Stages, in order: {html.escape(', '.join(stages))}.</p>" if len(stages) > 1 else ""
    monitored = [h["monitor_rows"] for h in history if h.get("monitor_rows")]
    if monitored:
        what = "CA and ASR" if any("asr" in h for h in history) else "CA"
        stage_note += (f'<p id="monitor-note">{what} per epoch: the network being trained, on {monitored[0]} '
                       "evenly spread test rows (without an inference wrapper); the table above is the final "
                       "model on the whole test set.</p>")
    info = metrics.get("defense_info") or {}
    ids, title = [], ""
    if info.get("isolated_ids"):
        ids, title = list(info["isolated_ids"]), f"Rows ABL isolated ({info.get('n_isolated', len(info['isolated_ids']))})"
    elif (info.get("curation") or {}).get("dropped_ids"):
        ids, title = list(info["curation"]["dropped_ids"]), f"Rows the audit dropped ({info['curation']['n_dropped']})"
    facts = [["model", metrics.get("model")], ["defense", metrics.get("defense")],
             ["rows trained on", metrics.get("n_train")], ["epochs", metrics.get("epochs")],
             ["seconds", f"{metrics.get('train_seconds') or 0:.1f}"], ["device", metrics.get("device")]]
    body = (f'<section id="results"><h2>Clean accuracy and attack success</h2>'
            f"{_table(['model', 'CA', 'ASR', 'RA'], rows)}{der}</section>"
            f'<section id="curves"><h2>Training curves</h2>{stage_note}{curves}</section>'
            + _rows_grid(train_ds, ids, title, _truth_share(ids, truth))
            + f'<section id="facts"><h2>Run</h2>{_table(["", ""], facts)}</section>')
    path = Path(out) / REPORT_HTML
    atomic_write_text(_page(f"vetset train: {metrics.get('defense', 'none')}", body), path)
    return path


def render_purify_report(metrics: dict, out: str | Path) -> Path:
    """``out``/report.html for a purification run."""
    from . import plots

    body = []
    res = metrics.get("residual")
    if res:
        cls = "warn" if res.get("warning") else ""
        body.append(f'<section id="residual"><h2>Backdoor evidence (trigger-free estimate)</h2><p class="{cls}" '
                    f'id="residual-summary"><b>{html.escape(res["summary"][0].upper() + res["summary"][1:])}</b></p>'
                    + (f"<p><b>Warning: {html.escape(res['warning'])}</b></p>" if res.get("warning") else "")
                    + f"<p>Looked for: {html.escape(str(res['after'].get('looks_for', '')))}, on "
                    f"{res['after'].get('rows', '?')} clean rows.</p></section>")
    audit_rows = metrics.get("audit_rows")
    if audit_rows:
        text = audit_rows.get("summary") or f"the audit's rows: {audit_rows.get('note', '')}"
        body.append(f'<section id="audit-rows"><h2>The audit\'s injected rows</h2><p class="'
                    f'{"warn" if audit_rows.get("warning") else ""}" id="audit-rows-summary"><b>'
                    f"{html.escape(text[0].upper() + text[1:])}</b></p>"
                    + (f"<p><b>Warning: {html.escape(audit_rows['warning'])}</b></p>" if audit_rows.get("warning")
                       else "") + "</section>")
    if "before" in metrics:
        b, a = metrics["before"], metrics["after"]
        rows = [["before", _pct(b.get("clean_acc")), _pct(b.get("asr")), _pct(b.get("ra"))],
                [f"after {metrics['method']}", _pct(a.get("clean_acc")), _pct(a.get("asr")), _pct(a.get("ra"))]]
        der = f"<p>DER: {metrics['der']:.4f}</p>" if isinstance(metrics.get("der"), float) else ""
        body.append(f'<section id="results"><h2>Clean accuracy and attack success</h2>'
                    f"{_table(['model', 'CA', 'ASR', 'RA'], rows)}{der}</section>")
    p = metrics.get("purification") or {}
    if p.get("steps"):
        steps = [[s["method"], ("yes" if s["residual_evidence"] else "no")
                  + (f" (audit's rows {s['audit_rows_share']:.1%})" if "audit_rows_share" in s else ""),
                  f"{s['transfer_rate']:.0%}" if s.get("transfer_decides") and s.get("transfer_rate") is not None
                  else "n/a", "not run" if s.get("smallest_to_median_l1") is None else f"{s['smallest_to_median_l1']:.2f}",
                  f"{s['ca_drop']:+.3f}" if "ca_drop" in s else "n/a", f"{s['seconds']:.1f}",
                  "yes" if s["method"] == p.get("chosen") else ""] for s in p["steps"]]
        body.append('<section id="steps"><h2>Auto: the methods tried</h2>'
                    + _table(["method", "residual evidence", "clean rows the input model's reversed trigger still moves",
                              "smallest mask / median", "held-out CA drop", "seconds", "kept"], steps)
                    + "".join(f'<p class="skipped">{html.escape(str(k["method"]))} skipped: {html.escape(str(k["why"]))}'
                              "</p>" for k in p.get("skipped") or []) + "</section>")
    history = p.get("history") or []
    if history:
        body.append(f'<section id="curves"><h2>Training curves</h2>'
                    f"{_img(plots.training_curves(history, metrics['method']), 'training-curves', 'curves')}</section>")
    facts = [["model", f"{metrics.get('source')} ({metrics.get('arch')})"], ["method", metrics.get("method")],
             ["clean rows used", metrics.get("n_clean")], ["seconds", f"{float(metrics.get('seconds') or 0.0):.2f}"]]
    if p.get("target_source"):
        facts.append(["the attack's target", p["target_source"]])
    if metrics.get("audit"):
        facts.append(["audit read", metrics["audit"]])
    seen = metrics.get("clean_rows_seen") or {}
    if seen.get("known"):
        facts.append(["clean rows the model was trained on", seen.get("message") or
                      f"{seen.get('seen', 0)} of {seen.get('clean_rows', 0)}"])
    ca = metrics.get("ca_check")
    if ca:
        facts.append(["clean-accuracy check", f"{ca['held_out_rows']} held-out rows: {ca.get('baseline', ca['before']):.3f} -> "
                      f"{ca['after']:.3f} (drop {ca['drop']:+.3f}; allowed {ca['max_drop']:g} + {ca['drop_noise']:.3f} noise)"
                      + (" collapsed; saved with --force" if ca.get("forced") else "")])
    body.append(f'<section id="facts"><h2>Run</h2>{_table(["", ""], facts)}</section>')
    path = Path(out) / REPORT_HTML
    atomic_write_text(_page(f"vetset purify: {metrics.get('method')}", "".join(body)), path)
    return path
