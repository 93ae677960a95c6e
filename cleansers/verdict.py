"""The audit's decision: which classes hold injected rows, which rows are flagged and why,
computed once from every detector's result (:func:`decide`).

A class is named as holding injected (backdoor-poisoned) rows when the evidence for it is
strong or comes from at least two independent signals, so that no single gate decides:

- ``class_size``: the class's rows against the median class (computed here). All-to-one
  dirty-label poisoning relabels rows of every class into the target: at 10% of a
  balanced dataset the target holds about twice the median. Weak evidence: a class may be
  large for honest reasons;
- each detector's ``info["class_evidence"]``: AGPD's per-class statistic (its published
  rule, z >= e^2: strong with the published PreAct-ResNet18, weak with a smaller model), SentiNet's patch-transplant rows (strong
  when enough rows of the class, most in one window, move other classes' images to it),
  training dynamics (the class learned far earlier than the others, as a clean-label SIG
  target is; a per-class split that is sharp);
- ``label_issue_share``: the share of the class flagged as wrong labels, against the other
  classes (weak): when the detection model does not learn a trigger, the injected rows of a
  dirty-label attack look like wrong labels, all in one class.

Rows flagged as injected: in a named class, the flags of the detectors that gave evidence
for that class (SentiNet's patch rows, AGPD's at its published rule, ABL's isolated rows)
when there are at least 10 of them, else the injected part of the training-dynamics split
(``dynamics``). Elsewhere those detectors' flags do not count (AGPD's rho fallback flagged
hard classes of clean data, and the clean half of a blended target). Specialists without class evidence (VDC)
flag alone; label-noise detectors flag wrong labels (with suggested labels) everywhere;
rankers' own flags (a share fixed by design) count only where another detector fired too,
unless the audit ran that ranker alone. Unreadable rows are flagged.

The verdict says "dirt found" when a class is named, or when the wrong labels found are
more than ``label_min_rows`` and ``label_min_fraction`` of the rows (a handful of flags on
a large clean set is what hard images give), or when rows are unreadable; else "clean",
with what was checked. Every decision is a sentence in ``findings``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.dataset import ImageDataset
from pipelines.verdict import AuditVerdict, ClassVerdict, Signal

from .base import DetectorResult, detector_kind

STRENGTHS = ("none", "weak", "strong")


@dataclass
class VerdictConfig:
    """``size_ratio`` / ``size_z``: the class-size signal fires when a class holds at least
    1.2x the median class and its robust z over the class sizes is at least 3 (a balanced
    dataset with 5% all-to-one poisoning: about 1.5x and z > 20); ``weak_needed``: weak
    signals that name a class (2); ``posterior``: the training-dynamics split's posterior
    at which a row of a named class is flagged (0.5); ``label_share_z`` /
    ``label_share_min``: a class whose share of wrong-label flags has a robust z of at
    least 4 over the classes and is at least 10% is weak evidence (5% symmetric noise on
    digits put 7% of one class's rows among the flags by chance); ``split_with_specialists``:
    in a class where specialists (SentiNet, AGPD) flagged at least 10 rows, flag only
    their rows (False, the default: the split added clean rows to SentiNet's exact patch
    flags) or also the split's part they sit in; ``min_distance_ratio``: the split flags rows
    only when its injected part lies at least twice as far from the other classes' profiles
    as its other part (else the class is named but its rows are not told apart: a blended
    photo key the model half learned split 3.3 / 2.5, and the part chosen was clean); ``label_min_rows`` /
    ``label_min_fraction``: wrong labels count as dirt found above 10 rows and 1% of the
    rows (clean 6,000-row CIFAR-10 slices with the CPU model: 0.4-0.7% flagged; 10%
    symmetric noise: about 4.5%). ``size_quota``: in a class named with its class-size
    signal, the split flags the class's excess over the median class (the injected count of
    an all-to-one dirty-label attack), most injected-looking rows first, instead of its
    posterior >= 0.5; and when the specialists' flags there are fewer than
    ``quota_fill_below`` (0.5) of that excess, the rest of it comes from the split's part
    where their flags sit (a Trojan watermark: SentiNet found 255 of 600 rows, the fill took
    F1 from 0.58 to 0.83; with BadNets SentiNet found 513 and the leftover rows, ones the
    model did not learn, rank no better than chance, so filling there cost 3.6 points).
    ``refine``: then, in each named class, refine the pick in the class's feature coordinates
    (the dynamics detector's ``arrays["feature_pcs"]``) by Fisher-discriminant self-training
    (:func:`refine_in_features`, at most ``refine_iters`` rounds, ``refine_ridge``), the
    vouching specialists' flags kept, the count grown to the class-size excess when that
    signal fired; only with at least ``refine_min_rows`` picked and unpicked rows (seed-0
    matrix, 6,000-row CIFAR-10: blended 5% F1 0.58 -> 0.91, lowfreq 10% 0.70 -> 0.93,
    Trojan 5% 0.69 -> 0.91; WaNet 5%, not learned, 0.69 -> 0.66; docs/benchmarks.md).
    ``refine_mode``: "em" (default), two Gaussians with a shared covariance fitted by EM from
    the pick, three starts, the likeliest kept (:func:`refine_em`), or "hard", the top-count
    self-training above (3-seed matrix: lowfreq 10% F1 0.81 -> 0.93, blended 5% 0.79 -> 0.83,
    blended-noise 5% 0.84 -> 0.89). ``cluster_start``: where the pick to refine comes from when there is none worth
    refining (:func:`cluster_pick`: the class's 2-means feature split, the part whose
    second-choice classes spread wider, by at least ``orient_margin`` nats): "auto" (when
    nothing was picked or the pick came only from the training-dynamics split; specialists'
    flags in the part judged clean are then dropped), "always", or "off" (3-seed matrix:
    blended 5% 0.31 -> 0.79, WaNet 10% 0.01 -> 0.78, hybrid 0.45 -> 0.80). ``split_z``: a
    class whose 2-means feature split separates its rows far more cleanly than the other
    classes' (robust z over the classes of :func:`split_separation` at least 10) is weak
    evidence (``feature_split``): SIG's target 12-17 on the CIFAR-10 matrix, clean CIFAR-10
    classes at most 3.2, but clean digits' class 1 (two ways of writing it) 1.5-7.6 over 4
    seeds, so the bar sits above that; it names a class only with a second signal (SIG 5% to
    "cat": early tail 0.25, under its strong bar, plus this). 0 turns it off.
    ``whole_class_below``: a named class at most this share of whose rows (0.05) sit at or
    below the other classes' median on the weakest of the training-dynamics views (how early,
    how surely, the margin, the middle epochs) is injected through and through: every readable
    row of it is flagged (a clean-label attack on all of the class's images: SIG at 10% of a
    class-balanced set poisons the whole target class, as BackdoorBench's pratio does). Saved
    6,000-row CIFAR-10 cells: SIG 10%'s target 0.7-1.8% of its rows at or below, every other
    class of the 63 cells (clean, noisy, 5% and 10% attack targets) and of the 50,000-row clean
    set at least 28% (:func:`whole_class_share`). 0 turns it off.
    ``strong_vouchers_only``: in a class a specialist vouched for strongly, the flags of one
    that vouched only weakly are not added (BadNets 10%, seed 1: SentiNet strong with 532
    flags, AGPD weak at z 9.1 on the small CNN added 158, 115 of them clean: F1 0.886 ->
    0.949; no other of the 63 saved cells changed); a weak voucher alone still keeps its flags.
    ``distrust_below``: the specialists' flags in a named class are dropped as pointing the
    wrong way only when fewer than this share of them lie in the part of the class's
    feature-space split that the second-choice spread calls injected (a contradiction: AGPD's
    inverted reference on a half-learned photo blend put 1% there); a split that cuts across
    the flags (a held-out BadNets 5% cell, target horse: 44% of SentiNet's 254 flags, all in
    one 8x8 window, FPR 0) says nothing about them, and they are kept (F1 0.49 -> 0.94). The
    saved cells' shares: 0.01 where the flags were wrong, 0.44-1.0 where they were right; no
    cell of the 63-cell matrix changed.
    ``free_share``: in a named class with no excess over the median class (a clean-label
    target: nothing says how many of its own images carry the trigger), the refinement's EM
    fits the injected share too instead of holding it at the pick's size (:func:`refine_em`):
    a held-out SIG 8% cell (80% of the target class poisoned, the early tail catching 314 of
    480 with no clean row) went from F1 0.78 to 0.98; the SIG 5% cells moved by -0.2 to +0.5
    points and no other saved cell changed (only clean-label targets are named without an
    excess). The fitted share is kept only when its pick holds 90% of the rows the evidence
    was about (``refine_em``'s ``free_overlap``), else the share stays held."""

    size_ratio: float = 1.2
    size_z: float = 3.0
    size_strong_ratio: float = 1.3
    size_strong_z: float = 10.0
    weak_needed: int = 2
    posterior: float = 0.5
    label_share_z: float = 4.0
    label_share_min: float = 0.10
    split_with_specialists: bool = False
    min_distance_ratio: float = 2.0
    size_quota: bool = True
    quota_fill_below: float = 0.5
    label_min_rows: int = 10
    label_min_fraction: float = 0.01
    refine: bool = True
    refine_iters: int = 10
    refine_min_rows: int = 10
    refine_ridge: float = 1e-3
    refine_mode: str = "em"
    split_z: float = 10.0
    cluster_start: str = "auto"
    orient_margin: float = 0.1
    size_veto: bool = True
    whole_class_below: float = 0.05
    strong_vouchers_only: bool = True
    distrust_below: float = 0.25
    free_share: bool = True
    # row-level fusion (cleansers/fusion.py): ``min_votes`` specialists without class
    # evidence must fire to flag a row; rankers count where ``agreement_votes`` detectors
    # fired (capped at the number that ran); ``needs_agreement`` None = the declared kinds,
    # else exactly these detectors are rankers
    min_votes: int = 1
    agreement_votes: int = 2
    needs_agreement: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.min_votes < 1 or self.agreement_votes < 1:
            raise ValueError("min_votes and agreement_votes must be >= 1")
        if self.needs_agreement is not None:
            self.needs_agreement = tuple(self.needs_agreement)

    def kind(self, name: str) -> str:
        declared = detector_kind(name)
        if self.needs_agreement is None or declared == "label_noise":
            return declared
        return "ranker" if name in self.needs_agreement else "specialist"


@dataclass
class Decision:
    verdict: AuditVerdict
    backdoor: np.ndarray  # bool per row: flagged as injected
    label_issue: np.ndarray  # bool per row: flagged as a wrong label
    other: np.ndarray  # bool per row: flagged by a specialist without class evidence or rankers' agreement
    row_reasons: list[list[str]]  # per row, the detectors / rules that fired, strongest first
    suggested: np.ndarray  # int per row, -1 = none
    calibrated: dict[str, np.ndarray]  # per detector, its scores rank-mapped by :func:`calibrate` (NaN -> 0)


def _robust_z(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med))
    if mad <= 1e-12:
        # a perfectly balanced set: any departure is infinitely unusual; keep it finite
        mad = max(1e-3 * abs(med), 1e-6)
    return (v - med) / mad


def calibrate(result: DetectorResult) -> np.ndarray:
    """Rank-map one detector's scores onto [0, 1] so that its flagged rows land in (0.5, 1]
    and the others in [0, 0.5), each part ordered by the detector's own score."""
    score, flag = result.score, result.flag
    out = np.full(score.shape, np.nan)
    valid = ~np.isnan(score)
    for mask, lo in ((flag & valid, 0.5), (~flag & valid, 0.0)):
        n = int(mask.sum())
        if n == 0:
            continue
        ranks = pd.Series(score[mask]).rank(method="average").to_numpy()
        out[mask] = lo + 0.5 * ranks / n if lo == 0.5 else 0.5 * (ranks - 0.5) / n
    return out


def _class_signals(ds: ImageDataset, results: list[DetectorResult], label_flags: np.ndarray,
                   cfg: VerdictConfig) -> tuple[dict[int, list[tuple[Signal, str, str]]], np.ndarray]:
    """Per class: (signal, strength, source detector) entries; and the class sizes."""
    K = ds.num_classes
    readable = ~ds.unreadable
    sizes = np.bincount(ds.labels[readable], minlength=K).astype(float)
    present = sizes > 0
    out: dict[int, list] = {k: [] for k in range(K)}
    med = float(np.median(sizes[present])) if present.any() else 0.0
    z = np.zeros(K)
    if present.sum() >= 3:
        z[present] = _robust_z(sizes[present])
    for k in range(K):
        ratio = sizes[k] / med if med else 0.0
        fired = bool(ratio >= cfg.size_ratio and z[k] >= cfg.size_z)
        strong = bool(ratio >= cfg.size_strong_ratio and z[k] >= cfg.size_strong_z)
        out[k].append((Signal("class_size", round(ratio, 3), cfg.size_ratio, fired,
                              f"{int(sizes[k])} rows, {ratio:.2f}x the median class ({med:.0f}); robust z {z[k]:.1f}"),
                       "strong" if strong else "weak" if fired else "none", "verdict"))
    for r in results:
        for e in r.info.get("class_evidence", []) or []:
            k = int(e["class"])
            if not 0 <= k < K:
                continue
            strength = e.get("strength", "none")
            out[k].append((Signal(e["signal"], float(e["value"]), e.get("threshold"), strength != "none",
                                  e.get("detail", "")), strength, r.name))
    dyn = next((r for r in results if r.name == "dynamics"), None)
    pcs = None if dyn is None else dyn.arrays.get("feature_pcs")
    if cfg.split_z > 0 and pcs is not None and pcs.ndim == 2 and pcs.shape[1] and present.sum() >= 3:
        sep = split_separation(ds, np.nan_to_num(pcs), 2 * cfg.refine_min_rows)
        have = ~np.isnan(sep)
        if have.sum() >= 3:
            sz = np.zeros(K)
            sz[have] = _robust_z(sep[have])
            for k in np.flatnonzero(have):
                fired = bool(sz[k] >= cfg.split_z)
                out[k].append((Signal("feature_split", round(float(sz[k]), 2), cfg.split_z, fired,
                                      f"its rows split in two in the model's feature space with {sep[k]:.0%} of "
                                      f"their spread between the parts (the classes' median "
                                      f"{np.median(sep[have]):.0%}); robust z {sz[k]:.1f}"),
                               "weak" if fired else "none", "verdict"))
    if label_flags.any() and present.sum() >= 3:
        share = np.array([label_flags[readable & (ds.labels == k)].mean() if present[k] else 0.0 for k in range(K)])
        lz = np.zeros(K)
        lz[present] = _robust_z(share[present])
        for k in range(K):
            fired = bool(lz[k] >= cfg.label_share_z and share[k] >= cfg.label_share_min)
            out[k].append((Signal("label_issue_share", round(float(share[k]), 4), cfg.label_share_min, fired,
                                  f"{share[k]:.1%} of the class flagged as wrong labels; robust z {lz[k]:.1f}"),
                           "weak" if fired else "none", "verdict"))
    return out, sizes


def split_separation(ds: ImageDataset, pcs: np.ndarray, min_rows: int) -> np.ndarray:
    """Per class: the share of its rows' spread in feature coordinates ``pcs`` that lies
    between the two parts of its 2-means split (:func:`two_means`; 1 - within / total sum of
    squares); NaN for a class of fewer than ``min_rows`` readable rows. A class that holds a
    second population (injected rows sharing a trigger, images of other classes) splits more
    cleanly than classes of one population."""
    out = np.full(ds.num_classes, np.nan)
    for k in range(ds.num_classes):
        rows = np.flatnonzero((ds.labels == k) & ~ds.unreadable)
        if len(rows) < min_rows:
            continue
        x = pcs[rows]
        total = float(((x - x.mean(0)) ** 2).sum())
        if total <= 0:
            continue
        part = two_means(x)
        if part.all() or not part.any():
            out[k] = 0.0
            continue
        within = float(((x[part] - x[part].mean(0)) ** 2).sum() + ((x[~part] - x[~part].mean(0)) ** 2).sum())
        out[k] = 1.0 - within / total
    return out


def decide(ds: ImageDataset, results: list[DetectorResult], config: VerdictConfig | None = None) -> Decision:
    cfg = config or VerdictConfig()
    n, K = len(ds), ds.num_classes
    names = ds.class_names
    by_name = {r.name: r for r in results}
    kinds = {r.name: cfg.kind(r.name) for r in results}
    label_dets = [r for r in results if kinds[r.name] == "label_noise"]
    label_flags = np.zeros(n, dtype=bool)
    for r in label_dets:
        label_flags |= r.flag
    signals, sizes = _class_signals(ds, results, label_flags, cfg)

    named: list[int] = []
    evidence_score = np.zeros(K)
    findings: list[str] = []
    for k in range(K):
        strengths = [s for _, s, _ in signals[k]]
        strong, weak = strengths.count("strong"), strengths.count("weak")
        evidence_score[k] = 2 * strong + weak
        if strong or weak >= cfg.weak_needed:
            named.append(k)
            fired = [f"{sig.name} {sig.value:g} ({src}, {s})" for sig, s, src in signals[k] if s != "none"]
            findings.append(f"class {names[k]} named as holding injected rows: " + "; ".join(fired))
        elif weak:
            fired = [f"{sig.name} {sig.value:g} ({src})" for sig, s, src in signals[k] if s != "none"]
            findings.append(f"class {names[k]}: one weak signal only ({'; '.join(fired)}), not named")

    # rows
    backdoor = np.zeros(n, dtype=bool)
    other = np.zeros(n, dtype=bool)
    reasons: list[list[tuple[float, str]]] = [[] for _ in range(n)]
    calibrated = {r.name: np.nan_to_num(calibrate(r), nan=0.0) for r in results}
    gives_evidence = {r.name for r in results if r.info.get("class_evidence")}
    dyn = by_name.get("dynamics")
    whole: set[int] = set()
    if dyn is not None and named:
        for k in named:
            share = whole_class_share(ds, k, dyn)
            if cfg.whole_class_below > 0 and share is not None and share <= cfg.whole_class_below:
                rows = np.flatnonzero((ds.labels == k) & ~ds.unreadable)
                backdoor[rows] = True
                whole.add(k)
                findings.append(f"class {names[k]}: only {share:.1%} of its rows sit at or below the other classes' "
                                "median on every training-dynamics view (how early and how surely the model learned "
                                f"them): the class is injected through and through, all {len(rows)} rows flagged "
                                "(a clean-label attack on all of its images)")
                for i in rows:
                    reasons[i].append((calibrated["dynamics"][i], "dynamics"))
                continue
            specialists = [r for r in results
                           if r.name in gives_evidence and _kept_voucher(r, k, results, gives_evidence, cfg)]
            rows_k = (ds.labels == k) & ~ds.unreadable
            spec = np.zeros(n, dtype=bool)
            for r in specialists:
                spec |= r.flag & rows_k
            spec_rows = int(spec.sum())
            excess = _size_excess(sizes, k, signals[k])
            if spec_rows >= 10 and not cfg.split_with_specialists:
                if not (cfg.size_quota and spec_rows < cfg.quota_fill_below * excess):
                    findings.append(f"class {names[k]}: the specialists' {spec_rows} flags are its injected rows "
                                    "(the training-dynamics split is not added)")
                    continue
                # the class holds more rows above the median class than the specialists found:
                # the rest of that count from the split's part where their flags sit
                post, side = _injected_posterior(ds, k, dyn, specialists, label_flags, signals[k])
                order = _top_rows(rows_k & ~spec, post, excess - spec_rows)
                backdoor[order] = True
                findings.append(f"class {names[k]}: the specialists flagged {spec_rows} rows, the class holds "
                                f"{excess} above the median class; {len(order)} more from the {side} part of its "
                                "training-dynamics split, most injected-looking first")
                for i in order:
                    reasons[i].append((calibrated["dynamics"][i], "dynamics"))
                continue
            split = dyn.info.get("classes", {}).get(str(k), {})
            d1, d2 = split.get("distance", 0.0), split.get("other_distance", 0.0)
            tail = _early_tail_rows(ds, k, dyn, signals[k])
            if tail.any():
                backdoor |= tail
                findings.append(f"class {names[k]}: its {int(tail.sum())} rows learned earlier than nearly every "
                                "other row flagged as injected")
                for i in np.flatnonzero(tail):
                    reasons[i].append((calibrated["dynamics"][i], "dynamics"))
            if "distance" in split and not spec_rows and d1 < cfg.min_distance_ratio * max(d2, 1e-9):
                findings.append(f"class {names[k]}: its rows could not be told apart (the training-dynamics split's "
                                f"two parts lie {d1:.1f} and {d2:.1f} from the other classes); "
                                + ("its split in the model's feature space decides" if cfg.cluster_start != "off"
                                   else "none flagged as injected, the class's size and signals are the finding"))
                continue
            post, side = _injected_posterior(ds, k, dyn, specialists, label_flags, signals[k])
            hit = rows_k & (post >= cfg.posterior)
            if cfg.size_quota and excess > 0:
                # the class's excess over the median class is how many rows were injected into
                # it (all-to-one dirty-label poisoning): flag that many, most injected-looking first
                hit = np.zeros(n, dtype=bool)
                hit[_top_rows(rows_k, post, excess)] = True
                side += f" (its {excess} rows above the median class, most injected-looking first)"
            backdoor |= hit
            findings.append(f"class {names[k]}: {int(hit.sum())} rows in the {side} part of its training-dynamics "
                            "split flagged as injected")
            for i in np.flatnonzero(hit):
                reasons[i].append((calibrated["dynamics"][i], "dynamics"))
    agreement = min(max(cfg.agreement_votes, cfg.min_votes), max(len(results), 1))
    fired_count = np.zeros(n, dtype=int)
    specialist_count = np.zeros(n, dtype=int)
    for r in results:
        fired_count += r.flag.astype(int)
        if kinds[r.name] == "specialist" and r.name not in gives_evidence:
            specialist_count += r.flag.astype(int)
    for r in results:
        kind = kinds[r.name]
        if kind == "label_noise":
            continue
        if kind == "ranker":
            hit = r.flag & (fired_count >= agreement)
            target = other
        elif r.name in gives_evidence:
            # in the named classes it gave evidence for (AGPD's rho fallback flagged the clean
            # half of a blended target it did not vouch for); everywhere when it is the
            # audit's only detector (the user asked for its decision)
            kept = [k for k in named if _kept_voucher(r, k, results, gives_evidence, cfg)]
            vouched = np.isin(ds.labels, kept) & ~ds.unreadable
            hit = r.flag & (vouched | (len(results) == 1))
            target = backdoor
        else:
            hit = r.flag & (specialist_count >= cfg.min_votes)
            target = other
        target |= hit
        for i in np.flatnonzero(hit):
            reasons[i].append((calibrated[r.name][i], r.name))
    if cfg.refine and dyn is not None and named:
        _refine_named(ds, [k for k in named if k not in whole], dyn, results, gives_evidence, sizes, signals,
                      backdoor, reasons, calibrated, findings, cfg)
    for r in label_dets:
        for i in np.flatnonzero(r.flag):
            reasons[i].append((calibrated[r.name][i], r.name))
    row_reasons = []
    for i in range(n):
        seen, ordered = set(), []
        for _, name in sorted(reasons[i], reverse=True):
            if name not in seen:
                seen.add(name)
                ordered.append(name)
        row_reasons.append((["unreadable"] if ds.unreadable[i] else []) + ordered)
    suggested = np.full(n, -1, dtype=np.int64)
    for r in results:
        if r.suggested_label is None:
            continue
        take = (suggested < 0) & r.flag & (r.suggested_label >= 0) & (label_flags | (kinds[r.name] != "label_noise"))
        suggested[take] = r.suggested_label[take]
    suggested[backdoor & ~label_flags] = -1  # an injected row's label is the attacker's; no honest suggestion

    verdict = _verdict(ds, results, signals, sizes, named, evidence_score, backdoor, label_flags, other,
                       suggested, findings, cfg)
    return Decision(verdict, backdoor, label_flags & ~ds.unreadable, other, row_reasons, suggested, calibrated)


def refine_in_features(x: np.ndarray, start: np.ndarray, count: int, keep: np.ndarray | None = None,
                       iters: int = 10, ridge: float = 1e-3) -> tuple[np.ndarray, int]:
    """Self-training in one class's feature coordinates ``x`` (n, d): the direction that best
    separates the picked rows from the others (Fisher's linear discriminant, pooled
    within-part covariance with a ``ridge`` share of its mean variance added), then the
    ``count`` rows farthest along it are the new pick; repeated until the pick stops changing
    (at most ``iters`` times). Rows in ``keep`` stay picked. Returns (pick, iterations)."""
    n = len(x)
    keep = np.zeros(n, dtype=bool) if keep is None else keep.copy()
    pick = start | keep
    count = int(min(max(count, keep.sum()), n))
    done = 0
    for done in range(1, iters + 1):
        a, b = x[pick], x[~pick]
        if len(a) < 2 or len(b) < 2:
            break
        cov = np.cov(np.vstack([a - a.mean(0), b - b.mean(0)]).T).reshape(x.shape[1], x.shape[1])
        cov += (ridge * np.trace(cov) / max(len(cov), 1) + 1e-12) * np.eye(len(cov))
        w = np.linalg.solve(cov, a.mean(0) - b.mean(0))
        score = x @ w
        free = np.flatnonzero(~keep)
        new = keep.copy()
        new[free[np.argsort(-score[free], kind="stable")[:count - int(keep.sum())]]] = True
        if (new == pick).all():
            break
        pick = new
    return pick, done


def refine_em(x: np.ndarray, start: np.ndarray, count: int, keep: np.ndarray | None = None,
              iters: int = 100, ridge: float = 1e-3, free: bool = False,
              free_overlap: float = 0.9) -> tuple[np.ndarray, int]:
    """Two Gaussians with one shared covariance (the generative model behind Fisher's
    discriminant) in one class's feature coordinates ``x`` (n, d), fitted by EM with the
    injected share held at ``count / n``; rows in ``keep`` stay injected; the ``count`` rows
    farthest along the final discriminant are the pick. EM finds a local optimum, so it
    starts three times: from ``start`` (responsibilities 1 / 0), from ``start`` softened to
    0.7 / 0.3, and from :func:`refine_in_features`' hard self-training of ``start``; the
    pick whose fitted mixture is likeliest is kept (on 66 saved CIFAR-10 cells it chose the
    best of the three in every cell where they differed; each alone fell to 0.55-0.63
    precision somewhere). Soft responsibilities let a pick that is only 60-85% right move a
    little at a time where a hard top-``count`` pick locks in. ``free``: the injected share
    is fitted too (EM's mixing weight, from ``count / n``), and the pick is every row more
    likely injected than not: for a class whose injected count nothing gives (a clean-label
    target, no excess over the median class). The free fit is kept only when its pick holds
    at least ``free_overlap`` (90%) of ``start``, the rows the evidence was about; else the
    share is held at ``count`` as without ``free``. In a class of one population a free
    two-Gaussian fit cuts it about in half wherever it likes (synthetic: 15-28% of the start
    kept); on the saved SIG cells it kept 99-100% of the early tail. Returns (pick, EM
    iterations of the chosen start)."""
    n, d = x.shape
    keep = np.zeros(n, dtype=bool) if keep is None else keep
    count = int(min(max(count, keep.sum(), 1), n - 1))
    hard, _ = refine_in_features(x, start, count, keep, 10, ridge)
    seed = start | keep
    starts = (np.where(seed, 1.0, 0.0), np.where(seed, 0.7, 0.3), np.where(hard, 1.0, 0.0))

    def likeliest(fit_share: bool) -> tuple[float, np.ndarray, int]:
        best = (-np.inf, seed, 0)
        for resp in starts:
            pick, done = _em_pick(x, resp, count, keep, iters, ridge, fit_share)
            ll = _mixture_loglik(x, pick, int(pick.sum()) if fit_share else count, ridge)
            if ll > best[0] + 1e-9:
                best = (ll, pick, done)
        return best

    best = likeliest(free)
    if free and (best[1] & seed).sum() < free_overlap * seed.sum():
        best = likeliest(False)
    return best[1], best[2]


def _em_pick(x: np.ndarray, resp: np.ndarray, count: int, keep: np.ndarray, iters: int,
             ridge: float, free: bool = False) -> tuple[np.ndarray, int]:
    n, d = x.shape
    prior = np.log(count / (n - count))
    resp = resp.copy()
    resp[keep] = 1.0
    w = np.zeros(d)
    b = 0.0
    done = 0
    for done in range(1, iters + 1):
        w1, w0 = resp.sum(), (1.0 - resp).sum()
        if w1 < 2 or w0 < 2:
            break
        if free:
            prior = float(np.log(w1 / w0))
        m1 = resp @ x / w1
        m0 = (1.0 - resp) @ x / w0
        c1, c0 = x - m1, x - m0
        cov = ((c1.T * resp) @ c1 + (c0.T * (1.0 - resp)) @ c0) / n
        cov += (ridge * np.trace(cov) / max(d, 1) + 1e-12) * np.eye(d)
        w = np.linalg.solve(cov, m1 - m0)
        b = -0.5 * (m1 + m0) @ w + prior
        new = 1.0 / (1.0 + np.exp(-np.clip(x @ w + b, -50.0, 50.0)))
        new[keep] = 1.0
        moved = float(np.abs(new - resp).max())
        resp = new
        if moved < 1e-6:
            break
    score = x @ w
    if free and w.any():
        pick = keep | (score + b >= 0.0)
        if 2 <= pick.sum() <= n - 2:
            return pick, done
    pick = keep.copy()
    rest = np.flatnonzero(~keep)
    pick[rest[np.argsort(-score[rest], kind="stable")[:count - int(keep.sum())]]] = True
    return pick, done


def _mixture_loglik(x: np.ndarray, pick: np.ndarray, count: int, ridge: float) -> float:
    """Log-likelihood of ``x`` under the shared-covariance mixture fitted to the split
    ``pick`` / rest, the injected share ``count / n``."""
    n, d = x.shape
    if pick.sum() < 2 or (~pick).sum() < 2:
        return -np.inf
    m1, m0 = x[pick].mean(0), x[~pick].mean(0)
    c = np.vstack([x[pick] - m1, x[~pick] - m0])
    cov = c.T @ c / n
    cov += (ridge * np.trace(cov) / max(d, 1) + 1e-12) * np.eye(d)
    inv = np.linalg.inv(cov)
    _, logdet = np.linalg.slogdet(cov)
    pi = count / n

    def log_density(m):
        z = x - m
        return -0.5 * np.einsum("ij,jk,ik->i", z, inv, z) - 0.5 * logdet

    return float(np.logaddexp(np.log(pi) + log_density(m1), np.log(1 - pi) + log_density(m0)).sum())


def two_means(x: np.ndarray, inits: int = 3, iters: int = 50) -> np.ndarray:
    """Deterministic 2-means on (n, d) ``x``: started from the sign of each of the first
    ``inits`` coordinates (principal components), Lloyd's iterations, the split with the
    smallest within-part sum of squares kept. Returns a bool per row (part 1)."""
    best, best_sse = np.zeros(len(x), dtype=bool), np.inf
    for j in range(min(inits, x.shape[1])):
        part = x[:, j] > np.median(x[:, j])
        for _ in range(iters):
            if part.all() or not part.any():
                break
            c1, c0 = x[part].mean(0), x[~part].mean(0)
            new = ((x - c1) ** 2).sum(1) < ((x - c0) ** 2).sum(1)
            if (new == part).all():
                break
            part = new
        if part.all() or not part.any():
            continue
        sse = ((x[part] - x[part].mean(0)) ** 2).sum() + ((x[~part] - x[~part].mean(0)) ** 2).sum()
        if sse < best_sse - 1e-9:
            best, best_sse = part, sse
    return best


def spread(classes: np.ndarray, num_classes: int) -> float:
    """Entropy (nats) of the histogram of ``classes`` (ints, -1 ignored)."""
    c = classes[classes >= 0]
    if not len(c):
        return 0.0
    h = np.bincount(c, minlength=num_classes).astype(float)
    h = h[h > 0] / h.sum()
    return float(-(h * np.log(h)).sum())


def cluster_pick(x: np.ndarray, second: np.ndarray | None, num_classes: int, excess: int,
                 margin: float = 0.1, hint: np.ndarray | None = None,
                 min_hint: int = 10, size_veto: bool = False) -> tuple[np.ndarray, str, str]:
    """Split one named class's feature coordinates ``x`` in two (:func:`two_means`) and say
    which part holds the injected rows. The injected rows of an all-to-one attack are images
    of the other classes, so the detection model's second choice on them (``second``)
    spreads over many classes, where the class's own images lean on a few look-alikes: the
    part whose second choices have the larger entropy, when the two differ by at least
    ``margin`` nats; else the part holding most of the ``hint`` rows (specialists' flags)
    when there are at least ``min_hint``; else the part whose size is nearer the class's
    excess over the median class (when it has one); else the smaller part. Returns (part,
    why, basis) with basis one of "spread", "hint", "size". Measured on the saved 6,000-row
    CIFAR-10 matrix (69 cells of 13 families, docs/benchmarks.md): the part named held more
    injected than clean rows in every cell (61-100%); the spread decided all but two cells,
    where the parts' spreads were within 0.05 nats and the size rule decided. ``size_veto``:
    the spread does not decide when the class has an excess, the other part's size is within
    25% of it and the spread's part is off by at least 50% (at two threads a blended 5% cell
    split 582 / 258 rows with a 310-row excess, the spread chose the 582 and F1 fell to 0.07;
    with the veto 0.73; it changed no other cell of the ~130 saved ones: seeds 0-4, both
    thread counts)."""
    part = two_means(x)
    parts = (part, ~part)
    if second is not None:
        e = [spread(second[p], num_classes) for p in parts]
        if abs(e[0] - e[1]) >= margin:
            i = int(np.argmax(e))
            sizes = [int(p.sum()) for p in parts]
            off = [abs(n - excess) / max(excess, 1) for n in sizes]
            if not (size_veto and excess > 0 and off[1 - i] <= 0.25 and off[i] >= 0.5):
                return parts[i], (f"the part whose second-choice classes spread wider ({e[i]:.2f} against "
                                  f"{e[1 - i]:.2f} nats)"), "spread"
    if hint is not None and hint.sum() >= min_hint:
        i = int(np.argmax([int((hint & p).sum()) for p in parts]))
        return parts[i], "the part holding most of the specialists' flags", "hint"
    sizes = [int(p.sum()) for p in parts]
    if excess > 0:
        i = int(np.argmin([abs(n - excess) for n in sizes]))
        return parts[i], f"the part of {sizes[i]} rows, nearer the class's {excess}-row excess", "size"
    i = int(np.argmin(sizes))
    return parts[i], f"the smaller part ({sizes[i]} of {sum(sizes)} rows)", "size"


def _refine_named(ds, named, dyn, results, gives_evidence, sizes, signals, backdoor, reasons, calibrated,
                  findings, cfg) -> None:
    """In each named class, the rows picked so far (the specialists' flags, the split's
    part) teach the class's feature space which way "injected" lies: refine the pick along
    that direction (:func:`refine_in_features`), the specialists' flags kept, and grow it to
    the class's excess over the median class when its class-size signal fired (the count an
    all-to-one dirty-label attack injected). In place on ``backdoor`` / ``reasons``."""
    pcs = dyn.arrays.get("feature_pcs")
    if pcs is None or pcs.ndim != 2 or pcs.shape[1] == 0:
        return
    pcs = np.nan_to_num(pcs)
    second = dyn.arrays.get("second_choice")
    if second is not None:  # (a cached result may hold it as floats)
        second = np.nan_to_num(np.asarray(second, dtype=np.float64), nan=-1).astype(np.int64)
    for k in named:
        rows = np.flatnonzero((ds.labels == k) & ~ds.unreadable)
        start = before = backdoor[rows].copy()
        keep = np.zeros(len(rows), dtype=bool)
        keepers = [r.name for r in results if r.name in gives_evidence and r.name != "dynamics"
                   and _kept_voucher(r, k, results, gives_evidence, cfg)]
        for r in results:
            if r.name in keepers:
                keep |= r.flag[rows]
        excess = _size_excess(sizes, k, signals[k])
        count = max(int(start.sum()), excess)
        distrusted: list[str] = []
        if cfg.cluster_start != "off" and len(rows) >= 2 * cfg.refine_min_rows:
            part, why, basis = cluster_pick(pcs[rows], None if second is None else second[rows], ds.num_classes,
                                            excess, cfg.orient_margin, keep, cfg.refine_min_rows,
                                            cfg.size_veto)
            if (basis == "spread" and keep.sum() >= cfg.refine_min_rows
                    and (keep & part).sum() < cfg.distrust_below * keep.sum()):
                # the specialists' flags sit in the part the spread calls clean (AGPD's
                # reference inverted on a blend the model half learned): not kept
                distrusted = keepers
                findings.append(f"class {ds.class_names[k]}: {int(keep.sum())} rows flagged by "
                                f"{', '.join(keepers)} lie mostly ({int((keep & ~part).sum())}) in the part of its "
                                f"feature-space split that looks like its own images; those flags are not kept")
                keep[:] = False
            tail = any(sig.name == "early_tail" and st != "none" for sig, st, _ in signals[k])
            split_only = keep.sum() < cfg.refine_min_rows and not tail
            # a class that splits far more cleanly than the others and holds no excess rows (a
            # clean-label target: SIG poisons the class's own images): its split's part is the count
            two_groups = excess == 0 and keep.sum() < cfg.refine_min_rows and any(
                sig.name == "feature_split" and st != "none" for sig, st, _ in signals[k])
            if (cfg.cluster_start == "always" or start.sum() < cfg.refine_min_rows
                    or (cfg.cluster_start == "auto" and (split_only or distrusted or two_groups))):
                start = part | keep
                count = excess if excess > 0 else int(start.sum())
                size_only = all(sig.name == "class_size" for sig, st, _ in signals[k] if st != "none")
                findings.append(f"class {ds.class_names[k]}: its rows split in two in the model's feature space; "
                                f"{why} taken as the injected part ({int(part.sum())} rows)"
                                + ("; the class was named by its size alone, so if it is large for honest "
                                   "reasons these rows are one of its own kinds of image, not injected ones"
                                   if size_only else ""))
        if start.sum() < cfg.refine_min_rows or len(rows) - start.sum() < cfg.refine_min_rows:
            continue
        count = min(count, len(rows) - cfg.refine_min_rows)
        if cfg.refine_mode == "em":
            # no excess over the median class (a clean-label target): how many rows are
            # injected is not known, so EM fits the share too
            pick, iters = refine_em(pcs[rows], start, count, keep, ridge=cfg.refine_ridge,
                                    free=cfg.free_share and excess == 0)
        else:
            pick, iters = refine_in_features(pcs[rows], start, count, keep, cfg.refine_iters, cfg.refine_ridge)
        added, dropped = rows[pick & ~before], rows[before & ~pick]
        if not len(added) and not len(dropped):
            continue
        backdoor[dropped] = False
        backdoor[added] = True
        for i in dropped:
            reasons[i] = [(v, name) for v, name in reasons[i] if name != "dynamics" and name not in distrusted]
        for i in added:
            reasons[i].append((calibrated["dynamics"][i], "dynamics"))
        findings.append(f"class {ds.class_names[k]}: {int(start.sum())} rows picked, refined in the model's feature "
                        f"space along the direction that separates them from the rest ({iters} rounds): "
                        f"{int(pick.sum())} flagged ({len(added)} of them not flagged before it, "
                        f"{len(dropped)} earlier flags dropped)"
                        + (f" ({int(keep.sum())} specialists' flags kept)" if keep.any() else ""))


def _top_rows(candidates: np.ndarray, score: np.ndarray, count: int) -> np.ndarray:
    """The indices of the ``count`` candidate rows with the highest ``score`` (ties: first)."""
    idx = np.flatnonzero(candidates)
    return idx[np.argsort(-score[idx], kind="stable")][:max(0, count)]


def _size_excess(sizes: np.ndarray, k: int, signals_k: list) -> int:
    """Rows of class ``k`` above the median class when its class-size signal fired, else 0."""
    if not any(s.name == "class_size" and st != "none" for s, st, _ in signals_k):
        return 0
    present = sizes > 0
    return max(0, int(round(sizes[k] - float(np.median(sizes[present])))))


def _early_tail_rows(ds: ImageDataset, k: int, dyn: DetectorResult, signals_k: list) -> np.ndarray:
    """When class ``k``'s early-learning tail fired: its rows fitted earlier than the other
    classes' ``tail_quantile`` (the rows the evidence is about; a clean-label SIG target
    at 10% is poisoned through and through, so its split has no clean part to find)."""
    out = np.zeros(len(ds), dtype=bool)
    fired = [s for s, st, src in signals_k if s.name == "early_tail" and st != "none" and src == "dynamics"]
    sig = dyn.arrays.get("signals")
    if not fired or sig is None:
        return out
    from .dynamics import SIGNALS

    early = np.nan_to_num(sig[:, SIGNALS.index("early")])
    rows = (ds.labels == k) & ~ds.unreadable
    others = (ds.labels != k) & ~ds.unreadable
    q = float(dyn.info.get("config", {}).get("tail_quantile", 0.99))
    if not others.any():
        return out
    out[rows] = early[rows] > np.quantile(early[others], q)
    return out


def whole_class_share(ds: ImageDataset, k: int, dyn: DetectorResult, min_rows: int = 20) -> float | None:
    """The share of class ``k``'s readable rows at or below the other classes' median, on the
    training-dynamics view where that share is largest (the weakest evidence of "all of it
    learned early and surely"): None without the dynamics signals or with fewer than
    ``min_rows`` rows on either side. A class as clean as the others sits near one half; a
    class whose every image carries a trigger the model learned, near 0."""
    sig = dyn.arrays.get("signals")
    if sig is None or sig.ndim != 2:
        return None
    from .dynamics import SIGNALS

    rows = (ds.labels == k) & ~ds.unreadable
    others = (ds.labels != k) & ~ds.unreadable
    if rows.sum() < min_rows or others.sum() < min_rows:
        return None
    shares = []
    for name in ("early", "conf", "aum", "middle"):
        v = np.nan_to_num(sig[:, SIGNALS.index(name)])
        shares.append(float((v[rows] <= np.median(v[others])).mean()))
    return max(shares)


def _strength(result: DetectorResult, k: int) -> str:
    """The strongest evidence ``result`` gave for class ``k`` ("none", "weak", "strong")."""
    found = [e.get("strength", "none") for e in result.info.get("class_evidence", []) or [] if int(e["class"]) == k]
    # a strength this module does not know counts as evidence, at the weak level
    return max((v if v in STRENGTHS else "weak" for v in found), key=STRENGTHS.index, default="none")


def _kept_voucher(result: DetectorResult, k: int, results: list[DetectorResult], gives_evidence: set,
                  cfg: "VerdictConfig") -> bool:
    """Whether ``result``'s flags count in class ``k``: it vouched for the class, and, with
    ``strong_vouchers_only``, strongly, when another specialist vouched strongly."""
    if not _vouches(result, k):
        return False
    if not cfg.strong_vouchers_only or result.name == "dynamics":
        return True
    strong = [r for r in results if r.name in gives_evidence and r.name != "dynamics" and _strength(r, k) == "strong"]
    return not strong or _strength(result, k) == "strong"


def _vouches(result: DetectorResult, k: int) -> bool:
    """Whether ``result`` gave (weak or strong) evidence that class ``k`` holds injected rows."""
    return _strength(result, k) != "none"


def _injected_posterior(ds: ImageDataset, k: int, dyn: DetectorResult, specialists: list[DetectorResult],
                        label_flags: np.ndarray, signals_k: list) -> tuple[np.ndarray, str]:
    """Which part of class ``k``'s training-dynamics split holds the injected rows, as a
    posterior per row, and why. When the detection model learned the trigger, the injected
    rows are the part it is surest of; when it did not, they look like wrong labels, the
    part it is least sure of. So: the part holding most of the rows that specialists (SentiNet,
    AGPD) flagged in the class, when they flagged at least 10; else, when the class's share of
    wrong-label flags fired, the less sure part; else the part whose signals lie farther from
    the other classes' (the detector's own choice)."""
    rows = (ds.labels == k) & ~ds.unreadable
    conf_post = dyn.arrays.get("posterior_confident")
    if conf_post is None:
        return np.nan_to_num(dyn.score), "anomalous"
    conf_post = np.nan_to_num(conf_post)
    spec = np.zeros(len(ds), dtype=bool)
    for r in specialists:
        spec |= r.flag
    spec &= rows
    if spec.sum() >= 10:
        if conf_post[spec].mean() >= 0.5:
            return conf_post, "surer (learned-trigger) part, where the specialists' flags sit,"
        return 1.0 - conf_post, "less sure part, where the specialists' flags sit,"
    if any(s.name == "label_issue_share" and st != "none" for s, st, _ in signals_k):
        return 1.0 - conf_post, "less sure (looks mislabelled) part"
    return np.nan_to_num(dyn.score), "anomalous (farther from the other classes)"


def _verdict(ds, results, signals, sizes, named, evidence_score, backdoor, label_flags, other, suggested,
             findings, cfg) -> AuditVerdict:
    n, names = len(ds), ds.class_names
    flagged = backdoor | label_flags | other | ds.unreadable
    med = float(np.median(sizes[sizes > 0])) if (sizes > 0).any() else 0.0
    label_only = label_flags & ~backdoor
    classes = []
    for k in range(ds.num_classes):
        rows_k = ds.labels == k
        sugg = Counter(names[s] for s in suggested[label_only & rows_k] if s >= 0)
        excess = sizes[k] - med
        estimate = int(round(excess * ds.num_classes / max(ds.num_classes - 1, 1))) if k in named and excess > 0 else None
        classes.append(ClassVerdict(
            class_id=k, class_name=names[k], rows=int(sizes[k]), size_ratio=round(sizes[k] / med, 3) if med else 0.0,
            backdoor=k in named, evidence=float(evidence_score[k]), signals=[s for s, _, _ in signals[k]],
            injected_rows=int((backdoor & rows_k).sum()), injected_estimate=estimate,
            mislabelled_rows=int((label_only & rows_k).sum()), suggested=dict(sugg.most_common()),
            flagged_rows=int((flagged & rows_k).sum())))
    pairs = Counter((names[ds.labels[i]], names[suggested[i]]) for i in np.flatnonzero(label_only) if suggested[i] >= 0)
    confusions = [{"given": g, "suggested": s, "rows": c} for (g, s), c in pairs.most_common(10)]
    n_label = int(label_only.sum())
    label_dirt = n_label > cfg.label_min_rows and n_label >= cfg.label_min_fraction * n
    if n_label and not label_dirt:
        findings.append(f"{n_label} rows flagged as possible wrong labels: at most {cfg.label_min_rows} rows or "
                        f"{cfg.label_min_fraction:.1%} of the data, what hard images give; not counted as dirt found")
    unreadable = int(ds.unreadable.sum())
    dirt = bool(named) or label_dirt or unreadable > 0 or bool(other.any()) or bool(backdoor.any())
    parts = []
    for k in named:
        c = classes[k]
        fired = [f"{_describe(s)}" for s, st, _ in signals[k] if st != "none"]
        parts.append(f"Likely backdoor: {c.injected_rows} rows injected into class {names[k]} "
                     f"(signals: {', '.join(fired)}).")
    if label_dirt:
        top = ", ".join(f"{c['given']}->{c['suggested']} {c['rows']}" for c in confusions[:3])
        parts.append(f"Likely wrong labels: {n_label} rows" + (f", mostly {top}." if top else "."))
    if unreadable:
        parts.append(f"{unreadable} rows could not be read (kept, flagged).")
    outside = backdoor & ~np.isin(ds.labels, named)
    if outside.any():
        parts.append(f"{int(outside.sum())} rows flagged as triggered by "
                     f"{', '.join(r.name for r in results)}, in no class the evidence named.")
    if other.any():
        parts.append(f"{int(other.sum())} rows flagged by other detectors.")
    checked = _checked(results)
    if not dirt:
        headline = "No dirt found (checked: " + "; ".join(checked) + ")."
        if n_label:
            headline += f" {n_label} rows look possibly mislabelled, no more than hard images give; see the grid."
    else:
        headline = " ".join(parts)
    # a class named by its size alone is "medium": a class may be large for honest reasons
    strong_named = any(st == "strong" and s.name != "class_size" for k in named for s, st, _ in signals[k])
    weak_counts = [sum(st != "none" for _, st, _ in signals[k]) for k in named]
    if named:
        confidence = "high" if strong_named or max(weak_counts) >= 3 else "medium"
    elif label_dirt:
        confidence = "medium" if n_label >= 5 * cfg.label_min_rows else "low"
    else:
        weakest = any(r.info.get("withheld") for r in results)
        confidence = "low" if weakest else "medium"
    return AuditVerdict(
        status="dirt_found" if dirt else "clean", headline=headline, confidence=confidence, rows=n,
        flagged=int(flagged.sum()), suspected_poisoned=int(backdoor.sum()), suspected_mislabelled=n_label,
        unreadable=unreadable, backdoor_classes=[names[k] for k in named], classes=classes, confusions=confusions,
        checked=checked, findings=findings,
        detectors={r.name: str(r.info.get("finding", "")) for r in results})


def _describe(s: Signal) -> str:
    if s.name == "class_size":
        return f"class size {s.value:.1f}x the median"
    if s.name == "agpd_z":
        return f"AGPD z {s.value:.1f}"
    if s.name == "sentinet_rows":
        return f"{int(s.value)} rows whose patch moves other images (SentiNet)"
    if s.name == "early_tail":
        return f"{s.value:.0%} of it learned earlier than nearly every other row"
    if s.name == "label_issue_share":
        return f"{s.value:.0%} of it looks mislabelled"
    if s.name == "feature_split":
        return f"its rows split in two far more cleanly than other classes' (robust z {s.value:.1f})"
    if s.name == "abl_isolated_share":
        return f"{s.value:.0%} of it isolated by ABL's low loss"
    return f"{s.name} {s.value:g}"


def _checked(results: list[DetectorResult]) -> list[str]:
    out = ["class sizes"]
    what = {"agpd": "AGPD's activation-gradient statistic per class",
            "sentinet": "SentiNet's patch-transplant test per row",
            "dynamics": "how each class's rows were learned (training dynamics, neighbours)",
            "confident": "wrong labels (cleanlab, AUM, neighbour agreement)",
            "vdc": "what a vision-language model sees in each image",
            "abl": "ABL's loss isolation", "spectral": "spectral signatures",
            "activation_clustering": "activation clustering", "outlier": "a pixel patch heuristic"}
    for r in results:
        out.append(what.get(r.name, r.name))
    return out
