"""The outputs of ``vetset bench``: one row per (cell x metric set) in ``bench.parquet``,
Markdown tables in ``bench.md`` (the published figures of ``specs/`` beside ours where
they exist) and a heat map ``bench.png``. Plain data in, files out (no training here):
the cells themselves are run by :mod:`cleansers.bench`.

A row has ``kind`` (``detect``, ``defense`` or ``purify``), ``attack``, ``rate``, ``seed``
and ``method`` (a detector or ``fused``, a defense, a purifier), and the metrics of its
kind: TPR / FPR / precision / F1 / AUROC on the poisoned rows against the clean ones
(detect), CA / ASR / RA and DER against the undefended run of the same attack, rate and
seed (defense, purify; purify also CA / ASR before).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from .atomic import atomic_path, atomic_write_table, atomic_write_text

PARQUET, MARKDOWN, FIGURE = "bench.parquet", "bench.md", "bench.png"
PUBLISHED_RATE = 0.1  # every published figure below is at 10% poisoning

COLUMNS: dict[str, pa.DataType] = {
    "cell": pa.string(), "kind": pa.string(), "attack": pa.string(), "rate": pa.float64(), "seed": pa.int64(),
    "method": pa.string(),
    "tpr": pa.float64(), "fpr": pa.float64(), "precision": pa.float64(), "f1": pa.float64(),
    "auroc": pa.float64(), "n_flagged": pa.float64(),
    "ca": pa.float64(), "asr": pa.float64(), "ra": pa.float64(), "der": pa.float64(),
    "ca_before": pa.float64(), "asr_before": pa.float64(), "n_train": pa.float64(),
    "seconds": pa.float64(), "published": pa.string(),
}

# specs/defenses.md, BackdoorBench leaderboard (CIFAR-10, PreAct-ResNet18, 10% poisoning):
# CA / ASR %, measured on the lossless CIFAR-10 (the shared copy is JPEG q75)
PUBLISHED_DEFENSES: dict[str, dict[str, tuple[float, float]]] = {
    "none": {"badnets": (91.32, 95.03), "blended": (93.47, 99.92), "sig": (84.48, 98.27), "wanet": (91.25, 89.73),
             "lowfreq": (93.19, 99.28)},
    "abl": {"badnets": (83.32, 0.00), "blended": (77.30, 0.73), "sig": (57.80, 0.00), "wanet": (83.19, 0.00),
            "lowfreq": (81.72, 0.21)},
    # AGPD's retraining on its filtered data (specs/detectors.md), the nearest to curate
    "curate": {"badnets": (91.9, 1.41)},
}
PUBLISHED_PURIFIERS: dict[str, dict[str, tuple[float, float]]] = {
    "ft": {"badnets": (89.96, 1.48), "blended": (92.78, 96.11), "sig": (90.80, 2.37), "wanet": (93.48, 17.10),
           "lowfreq": (92.37, 78.44)},
    "fp": {"badnets": (91.31, 57.13), "blended": (93.17, 99.26), "sig": (89.10, 26.20), "wanet": (91.46, 1.09),
           "lowfreq": (92.90, 98.97)},
    "nc": {"badnets": (89.05, 1.27), "blended": (93.47, 99.92), "sig": (84.48, 98.27), "wanet": (91.80, 7.53),
           "lowfreq": (91.62, 1.41)},
}
# specs/detectors.md (CIFAR-10, PreAct-ResNet18, 10% poisoning): TPR / FPR / F1 %
PUBLISHED_DETECTORS: dict[str, dict[str, tuple[float, float, float | None]]] = {
    "agpd": {"badnets": (90.06, 0.03, 94.65), "blended": (99.98, 0.02, 99.88), "sig": (100.0, 0.04, 99.66),
             "wanet": (97.80, 0.31, 97.40), "lowfreq": (99.80, 0.07, 99.60)},
    "abl": {"badnets": (89.74, 1.14, None)},
}


def published(kind: str, method: str, attack: str, rate: float = PUBLISHED_RATE) -> str:
    """The published figure for this row as text ("CA/ASR" or "TPR/FPR/F1"), or "" (also
    at any other rate than the published 10%)."""
    if abs(float(rate) - PUBLISHED_RATE) > 1e-9:
        return ""
    if kind == "detect":
        fig = PUBLISHED_DETECTORS.get(method, {}).get(attack)
        return "" if fig is None else "/".join("-" if v is None else f"{v:.2f}" for v in fig)
    table = PUBLISHED_DEFENSES if kind == "defense" else PUBLISHED_PURIFIERS
    fig2 = table.get(method, {}).get(attack)
    return "" if fig2 is None else f"{fig2[0]:.2f}/{fig2[1]:.2f}"


def der(ca: float, asr: float, ca_base: float, asr_base: float) -> float:
    """BackdoorBench's defense effectiveness rating (trainers.evaluate.der, restated here
    because pipelines does not import trainers)."""
    return (max(0.0, asr_base - asr) - max(0.0, ca_base - ca) + 1) / 2


def bench_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a table with every column of :data:`COLUMNS`; DER filled in for defense
    rows from the ``none`` row of the same attack, rate and seed, and the published figure."""
    frame = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=list(COLUMNS))
    for col, typ in COLUMNS.items():
        if typ == pa.float64():
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    base = {(r.attack, r.rate, r.seed): (r.ca, r.asr) for r in frame.itertuples()
            if r.kind == "defense" and r.method == "none"}
    for i, r in enumerate(frame.itertuples()):
        if r.kind == "defense" and r.method != "none" and (r.attack, r.rate, r.seed) in base:
            frame.loc[frame.index[i], "der"] = der(r.ca, r.asr, *base[(r.attack, r.rate, r.seed)])
    frame["published"] = [published(k, m, a, r) for k, m, a, r in
                          zip(frame["kind"], frame["method"], frame["attack"], frame["rate"])]
    return frame


def _pct(x: Any) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _mean(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Mean over seeds per (attack, rate, method), in the order the rows came."""
    part = frame[frame["kind"] == kind]
    if part.empty:
        return part
    numeric = [c for c, t in COLUMNS.items() if t == pa.float64() and c != "rate"]
    grouped = part.groupby(["attack", "rate", "method"], sort=False)
    out = grouped[numeric].mean().reset_index()
    out["seeds"] = grouped["seed"].apply(lambda s: ",".join(str(v) for v in sorted(set(s)))).to_numpy()
    out["published"] = grouped["published"].first().to_numpy()
    return out


def markdown(frame: pd.DataFrame, header: str = "") -> str:
    """bench.md: one table per kind of cell (means over seeds), published figures beside."""
    lines = ["# vetset bench", ""]
    if header:
        lines += [header, ""]
    det = _mean(frame, "detect")
    if not det.empty:
        lines += ["## Detectors (poisoned rows against clean rows; %)", "",
                  "| attack | rate | seeds | detector | TPR | FPR | precision | F1 | AUROC | flagged | seconds "
                  "| published TPR/FPR/F1 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in det.itertuples():
            lines.append(f"| {r.attack} | {r.rate:g} | {r.seeds} | {r.method} | {_pct(r.tpr)} | {_pct(r.fpr)} | "
                         f"{_pct(r.precision)} | {_pct(r.f1)} | {_num(r.auroc)} | {_num(r.n_flagged, 0)} | "
                         f"{_num(r.seconds, 0)} | {r.published or '-'} |")
        lines.append("")
    for kind, title in (("defense", "In-training defenses"), ("purify", "Purifiers (on the undefended model)")):
        part = _mean(frame, kind)
        if part.empty:
            continue
        before = kind == "purify"
        lines += [f"## {title} (CA / ASR / RA %, DER against the undefended run)", "",
                  "| attack | rate | seeds | " + ("method | CA before | ASR before | " if before else "defense | ")
                  + "CA | ASR | RA | DER | seconds | published CA/ASR |",
                  "|---|---|---|---|" + ("---|---|" if before else "") + "---|---|---|---|---|---|"]
        for r in part.itertuples():
            extra = f"{_pct(r.ca_before)} | {_pct(r.asr_before)} | " if before else ""
            lines.append(f"| {r.attack} | {r.rate:g} | {r.seeds} | {r.method} | {extra}{_pct(r.ca)} | {_pct(r.asr)} | "
                         f"{_pct(r.ra)} | {_num(r.der)} | {_num(r.seconds, 0)} | {r.published or '-'} |")
        lines.append("")
    return "\n".join(lines)


def heatmap(frame: pd.DataFrame, path: str | Path) -> Path | None:
    """bench.png: per kind of cell a heat map of (attack @ rate) x method, mean over seeds:
    F1 of the detectors, ASR of the defenses and purifiers (CA printed beside)."""
    panels = [(kind, _mean(frame, kind)) for kind in ("detect", "defense", "purify")]
    panels = [(k, p) for k, p in panels if not p.empty]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    widths = [max(3.0, 1.1 * p["method"].nunique() + 1.5) for _, p in panels]
    height = max(2.2, 0.6 * max(p.groupby(["attack", "rate"]).ngroups for _, p in panels) + 1.4)
    fig, axes = plt.subplots(1, len(panels), figsize=(sum(widths), height), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for ax, (kind, part) in zip(axes[0], panels):
        methods = list(dict.fromkeys(part["method"]))
        rows = list(dict.fromkeys(zip(part["attack"], part["rate"])))
        value = "f1" if kind == "detect" else "asr"
        grid = np.full((len(rows), len(methods)), np.nan)
        text = [["" for _ in methods] for _ in rows]
        for r in part.itertuples():
            i, j = rows.index((r.attack, r.rate)), methods.index(r.method)
            grid[i, j] = getattr(r, value)
            text[i][j] = (f"F1 {_pct(r.f1)}" if kind == "detect" else f"ASR {_pct(r.asr)}\nCA {_pct(r.ca)}")
        cmap = "RdYlGn" if kind == "detect" else "RdYlGn_r"
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(methods)):
                ax.text(j, i, text[i][j] or "-", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(rows)), [f"{a} {100 * rate:g}%" for a, rate in rows], fontsize=8)
        ax.set_title({"detect": "detectors: F1 on poisoned rows", "defense": "defenses: ASR (CA)",
                      "purify": "purifiers: ASR (CA) after"}[kind], fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def write_bench(rows: list[dict[str, Any]], out: str | Path, header: str = "") -> dict[str, Path]:
    """bench.parquet + bench.md + bench.png under ``out`` (each written atomically)."""
    out = Path(out)
    frame = bench_frame(rows)
    schema = pa.schema(list(COLUMNS.items()))
    atomic_write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), out / PARQUET)
    atomic_write_text(markdown(frame, header) + "\n", out / MARKDOWN)
    paths = {"parquet": out / PARQUET, "markdown": out / MARKDOWN}
    figure = heatmap(frame, out / FIGURE)
    if figure is not None:
        paths["figure"] = figure
    return paths
