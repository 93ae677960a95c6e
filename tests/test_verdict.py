"""The verdict's rules on fixed detector results (no training): which class is named, which
rows are flagged and why, what the headline says, and verdict.json."""
from __future__ import annotations

import json

import numpy as np
import pytest

import cleansers  # noqa: F401  (registers the detectors and their kinds)
from cleansers.base import DetectorResult, detector_kind
from cleansers.fusion import FusionConfig, fuse_and_decide
from pipelines.dataset import ImageDataset
from pipelines.verdict import AuditVerdict, read_verdict, write_verdict

K = 5


def _ds(sizes: list[int]) -> ImageDataset:
    labels = np.concatenate([np.full(s, k) for k, s in enumerate(sizes)])
    n = len(labels)
    return ImageDataset(np.zeros((n, 2, 2, 3), np.uint8), labels, [f"c{k}" for k in range(len(sizes))],
                        [f"r{i}" for i in range(n)])


def _evidence(k_strong: dict[int, tuple[str, str, float]], signal: str) -> list[dict]:
    return [{"class": k, "signal": signal, "value": v, "threshold": 3.0, "strength": st, "detail": ""}
            for k, (_, st, v) in k_strong.items()]


def _dynamics(ds: ImageDataset, posterior: np.ndarray, early: dict[int, float] | None = None) -> DetectorResult:
    """A training-dynamics result: the split's posterior, and class-mean early-learning z's."""
    ev = [{"class": k, "signal": "early_tail", "value": v, "threshold": 0.1,
           "strength": "weak" if v >= 0.1 else "none", "detail": ""} for k, v in (early or {}).items()]
    return DetectorResult("dynamics", posterior, np.zeros(len(ds), bool), None, {"class_evidence": ev})


def test_detectors_declare_their_kind():
    assert detector_kind("agpd") == "specialist" and detector_kind("sentinet") == "specialist"
    assert detector_kind("confident") == "label_noise"
    assert {detector_kind(n) for n in ("spectral", "activation_clustering", "dynamics", "outlier")} == {"ranker"}
    assert detector_kind("abl") == "specialist"  # its mixture cut is data-driven


UNEVEN = [150, 100, 95, 110, 105]  # class 0 is 1.43x the median, robust z 6: weak evidence only


def test_size_excess_and_early_learning_name_the_class_and_flag_its_anomalous_part():
    ds = _ds(UNEVEN)
    post = np.zeros(len(ds))
    injected = np.arange(100, 150)  # the last third of class 0
    post[injected] = 0.9
    post[250:260] = 0.9  # a split in class 2 too, which nothing else names
    frame, verdict = fuse_and_decide(ds, [_dynamics(ds, post, {0: 0.15, 2: 0.02})])
    assert verdict.backdoor_classes == ["c0"] and verdict.status == "dirt_found"
    # the class's excess over the median class (150 - 105 = 45) is how many rows are flagged,
    # the split's most injected-looking first
    flagged = frame["is_backdoor"].to_numpy().nonzero()[0]
    assert len(flagged) == 45 and set(flagged) <= set(injected)
    assert frame.loc[flagged, "reasons"].eq("dynamics").all() and not frame.loc[250:259, "flagged"].any()
    c0 = verdict.classes[0]
    assert c0.backdoor and c0.injected_rows == 45 and c0.size_ratio == pytest.approx(150 / 105, abs=1e-3)
    assert {s.name for s in c0.signals if s.fired} == {"class_size", "early_tail"}
    assert verdict.headline.startswith("Likely backdoor: 45 rows injected into class c0")
    assert "class size 1.4x the median" in verdict.headline and verdict.confidence == "medium"
    assert (frame["flagged"] == (frame["dirty_score"] >= 0.5)).all()


def test_without_the_size_quota_the_split_posterior_decides():
    ds = _ds(UNEVEN)
    post = np.zeros(len(ds))
    post[100:150] = 0.9
    cfg = FusionConfig(size_quota=False)
    frame, verdict = fuse_and_decide(ds, [_dynamics(ds, post, {0: 0.15})], cfg)
    assert frame["is_backdoor"].to_numpy().nonzero()[0].tolist() == list(range(100, 150))


def test_specialist_flags_short_of_the_size_excess_are_filled_from_the_split():
    """A class 2x the median: a specialist vouches for it with 20 exact flags (under half of
    the 100-row excess), so the split's part where they sit gives the other 80."""
    ds = _ds([200, 100, 100, 100, 100])
    post = np.zeros(len(ds))
    post[100:200] = 0.9
    post[95:100] = 0.5
    dyn = _dynamics(ds, np.zeros(len(ds)), {0: 0.02})
    dyn.arrays["posterior_confident"] = post
    flag = np.zeros(len(ds), bool)
    flag[180:200] = True
    spec = DetectorResult("sentinet", flag.astype(float), flag, None,
                          {"class_evidence": _evidence({0: ("", "strong", 20.0)}, "sentinet_rows")})
    frame, verdict = fuse_and_decide(ds, [dyn, spec])
    assert frame["is_backdoor"].to_numpy().nonzero()[0].tolist() == list(range(100, 200))
    assert any("80 more" in f for f in verdict.findings), verdict.findings
    # most of the excess found by the specialist: its flags alone
    flag[120:200] = True
    spec = DetectorResult("sentinet", flag.astype(float), flag, None,
                          {"class_evidence": _evidence({0: ("", "strong", 80.0)}, "sentinet_rows")})
    frame, _ = fuse_and_decide(ds, [dyn, spec])
    assert frame["is_backdoor"].to_numpy().nonzero()[0].tolist() == list(range(120, 200))


def test_a_class_far_larger_than_balanced_others_is_named_by_its_size_alone():
    ds = _ds([200, 100, 100, 100, 100])
    post = np.zeros(len(ds))
    post[100:200] = 0.9
    frame, verdict = fuse_and_decide(ds, [_dynamics(ds, post, {0: 0.02})])
    assert verdict.backdoor_classes == ["c0"] and frame["flagged"].sum() == 100
    assert [s.name for s in verdict.classes[0].signals if s.fired] == ["class_size"]


def test_one_weak_signal_names_nothing():
    ds = _ds(UNEVEN)  # a large class, and nothing else says it holds injected rows
    post = np.zeros(len(ds))
    post[100:150] = 0.9
    frame, verdict = fuse_and_decide(ds, [_dynamics(ds, post, {0: 0.02})])
    assert verdict.backdoor_classes == [] and not frame["flagged"].any()
    assert verdict.status == "clean" and verdict.headline.startswith("No dirt found (checked: class sizes")
    assert any("one weak signal only" in f for f in verdict.findings)


def test_strong_evidence_names_a_class_alone_and_only_named_classes_keep_agpd_flags():
    ds = _ds([100] * K)
    flag = np.zeros(len(ds), bool)
    flag[:30] = True  # class 0: the published rule
    flag[220:225] = True  # class 2: AGPD's rho fallback (weak), alone
    agpd = DetectorResult("agpd", flag.astype(float), flag, None, {"class_evidence": _evidence(
        {0: ("agpd_z", "strong", 9.1), 2: ("agpd_z", "weak", 3.5), 1: ("agpd_z", "none", 0.2)}, "agpd_z")})
    frame, verdict = fuse_and_decide(ds, [agpd, _dynamics(ds, np.zeros(len(ds)))])
    assert verdict.backdoor_classes == ["c0"] and verdict.confidence == "high"
    assert frame["flagged"].to_numpy().nonzero()[0].tolist() == list(range(30))
    assert "AGPD z 9.1" in verdict.headline
    # the audit's only detector keeps its own flags (the user asked for its decision)
    alone = fuse_and_decide(ds, [agpd])[0]
    assert alone["flagged"].sum() == 35


def test_a_weak_vouchers_flags_are_not_added_where_another_specialist_vouched_strongly():
    ds = _ds([100] * K)
    n = len(ds)
    patch = np.zeros(n, bool)
    patch[:30] = True  # SentiNet: strong, exact
    loose = np.zeros(n, bool)
    loose[20:50] = True  # AGPD: weak, 20 rows beyond SentiNet's
    sentinet = DetectorResult("sentinet", patch.astype(float), patch, None, {"class_evidence": _evidence(
        {0: ("sentinet_rows", "strong", 30)}, "sentinet_rows")})
    agpd = DetectorResult("agpd", loose.astype(float), loose, None, {"class_evidence": _evidence(
        {0: ("agpd_z", "weak", 9.1)}, "agpd_z")})
    dyn = _dynamics(ds, np.zeros(n))
    frame, verdict = fuse_and_decide(ds, [agpd, sentinet, dyn])
    assert verdict.backdoor_classes == ["c0"]
    assert frame["is_backdoor"].to_numpy().nonzero()[0].tolist() == list(range(30))
    # switched off: the union
    frame = fuse_and_decide(ds, [agpd, sentinet, dyn], FusionConfig(strong_vouchers_only=False))[0]
    assert frame["is_backdoor"].to_numpy().nonzero()[0].tolist() == list(range(50))
    # a weak voucher with no strong one beside it keeps its flags (class 0 named by two weak signals)
    weak_patch = DetectorResult("sentinet", patch.astype(float), patch, None, {"class_evidence": _evidence(
        {0: ("sentinet_rows", "weak", 30)}, "sentinet_rows")})
    frame, verdict = fuse_and_decide(ds, [agpd, weak_patch, dyn])
    assert verdict.backdoor_classes == ["c0"]
    assert frame["is_backdoor"].to_numpy().nonzero()[0].tolist() == list(range(50))


def test_wrong_labels_concentrated_in_one_class_are_evidence_and_headline_counts_confusions():
    ds = _ds([300, 200, 190, 220, 210])
    flag = np.zeros(len(ds), bool)
    flag[200:300] = True  # half of the big class looks mislabelled: an unlearned injection
    flag[[310, 520, 720, 930]] = True
    sugg = np.where(flag, 1, -1)
    sugg[200:300] = np.arange(100) % 4 + 1
    conf = DetectorResult("confident", flag.astype(float), flag, sugg, {})
    frame, verdict = fuse_and_decide(ds, [conf])
    assert verdict.backdoor_classes == ["c0"]
    fired = {s.name for s in verdict.classes[0].signals if s.fired}
    assert fired == {"class_size", "label_issue_share"}
    assert frame["is_label_issue"].sum() == 104 and verdict.suspected_mislabelled == 104
    assert verdict.classes[0].mislabelled_rows == 100 and sum(verdict.classes[0].suggested.values()) == 100
    assert frame.loc[200, "suggested_label"] == 1 and frame.loc[199, "suggested_label"] == -1


def test_a_few_label_flags_on_a_large_clean_set_are_not_dirt_found():
    ds = _ds([1000] * K)
    flag = np.zeros(len(ds), bool)
    flag[[5, 1500, 3333]] = True
    conf = DetectorResult("confident", flag.astype(float), flag, np.where(flag, 1, -1), {})
    frame, verdict = fuse_and_decide(ds, [conf])
    assert frame["flagged"].sum() == 3 and verdict.status == "clean"
    assert "3 rows look possibly mislabelled" in verdict.headline


def test_unreadable_rows_are_flagged_and_reported():
    ds = _ds([10] * K)
    ds.unreadable[[3, 7]] = True
    frame, verdict = fuse_and_decide(ds, [DetectorResult("agpd", np.zeros(len(ds)), np.zeros(len(ds), bool))])
    assert frame["flagged"].sum() == 2 and (frame.loc[[3, 7], "reasons"] == "unreadable").all()
    assert verdict.status == "dirt_found" and "2 rows could not be read" in verdict.headline


def test_rankers_need_agreement_unless_alone_and_the_override():
    ds = _ds([4, 4])
    ac = DetectorResult("activation_clustering", np.arange(8.0), np.array([1, 1, 0, 0, 0, 0, 1, 1], bool))
    assert fuse_and_decide(ds, [ac])[0]["flagged"].sum() == 4
    spectral = DetectorResult("spectral", np.arange(8.0), np.array([1, 0, 0, 0, 0, 0, 0, 1], bool))
    assert fuse_and_decide(ds, [ac, spectral])[0]["flagged"].to_numpy().nonzero()[0].tolist() == [0, 7]
    union = fuse_and_decide(ds, [ac, spectral], FusionConfig(needs_agreement=()))[0]
    assert union["flagged"].sum() == 4


def test_verdict_json_round_trip_and_bad_files(tmp_path):
    ds = _ds(UNEVEN)
    post = np.zeros(len(ds))
    post[100:150] = 0.9
    _, verdict = fuse_and_decide(ds, [_dynamics(ds, post, {0: 0.15})])
    write_verdict(verdict, tmp_path / "verdict.json")
    back = read_verdict(tmp_path / "verdict.json")
    assert back == verdict and isinstance(back, AuditVerdict) and back.classes[0].signals[0].name == "class_size"
    assert json.loads((tmp_path / "verdict.json").read_text())["status"] == "dirt_found"
    assert back.event_summary()["backdoor_classes"] == ["c0"]
    (tmp_path / "bad.json").write_text('{"status": "maybe"}')
    from pipelines.errors import DataError

    with pytest.raises(DataError):
        read_verdict(tmp_path / "bad.json")
    with pytest.raises(DataError):
        read_verdict(tmp_path / "missing.json")


def test_the_report_grid_takes_turns_between_kinds_and_classes():
    """Wrong labels scored dirtier than the injected rows still leave the first tile to an
    injected row, and no class fills the grid."""
    import pandas as pd

    from pipelines.report import interleaved_flagged

    n = 40
    frame = pd.DataFrame({
        "label": [i % 4 for i in range(n)], "flagged": True, "dirty_score": np.linspace(1.0, 0.5, n),
        "is_backdoor": [i >= 30 for i in range(n)], "is_label_issue": [i < 30 for i in range(n)],
        "is_unreadable": False, "reasons": ["sentinet" if i >= 30 else "confident" for i in range(n)]})
    frame.loc[30:, "label"] = 0
    grid = interleaved_flagged(frame, 8)
    assert grid["is_backdoor"].tolist() == [True, False] * 4
    assert grid.loc[~grid["is_backdoor"], "label"].tolist() == [0, 1, 2, 3]
    assert grid.index[0] == 30  # the dirtiest injected row
    assert len(interleaved_flagged(frame, 100)) == n


def _two_populations(n_clean: int, n_injected: int, shift: float, d: int = 8, seed: int = 0) -> np.ndarray:
    """Feature coordinates: clean rows around 0, injected rows shifted along one direction
    (what a learned trigger does to a class's features), unit noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_clean + n_injected, d))
    x[n_clean:, 0] += shift
    x[n_clean:, 1] -= shift / 2
    return x


def test_refine_in_features_corrects_a_noisy_pick_and_keeps_what_it_must():
    from cleansers.verdict import refine_in_features

    x = _two_populations(300, 100, shift=4.0)
    truth = np.arange(400) >= 300
    start = np.zeros(400, bool)
    start[330:390] = True  # 60 injected rows
    start[:40] = True  # and 40 clean ones
    pick, rounds = refine_in_features(x, start, 100)
    assert pick.sum() == 100 and (pick & truth).sum() >= 95 and rounds >= 2
    # rows to keep stay picked, and the count grows to what is asked
    keep = np.zeros(400, bool)
    keep[:5] = True
    pick, _ = refine_in_features(x, start, 105, keep)
    assert pick[:5].all() and pick.sum() == 105 and (pick & truth).sum() >= 95
    # nothing to separate (one population): the pick keeps its size
    flat = np.random.default_rng(1).normal(size=(400, 8))
    assert refine_in_features(flat, start, 100)[0].sum() == 100


def test_the_verdict_refines_a_named_class_pick_in_feature_space_and_grows_it_to_the_excess():
    """A class 2x the median: a specialist vouches for it with 60 exact flags (over half of
    the 100-row excess, so they stand alone without the refinement); the class's feature
    coordinates separate its injected rows, so the refinement grows the pick to the excess."""
    ds = _ds([200, 100, 100, 100, 100])
    n = len(ds)
    pcs = np.zeros((n, 8))
    pcs[:200] = _two_populations(100, 100, shift=5.0)
    dyn = _dynamics(ds, np.zeros(n), {0: 0.02})
    dyn.arrays["posterior_confident"] = np.zeros(n)
    dyn.arrays["feature_pcs"] = pcs
    flag = np.zeros(n, bool)
    flag[140:200] = True
    spec = DetectorResult("sentinet", flag.astype(float), flag, None,
                          {"class_evidence": _evidence({0: ("", "strong", 60.0)}, "sentinet_rows")})
    frame, verdict = fuse_and_decide(ds, [dyn, spec])
    assert frame["is_backdoor"].to_numpy().nonzero()[0].tolist() == list(range(100, 200))
    assert set(frame.loc[100:139, "reasons"]) == {"dynamics"} and set(frame.loc[140:199, "reasons"]) == {"sentinet"}
    assert any("refined in the model's feature space" in f and "40 of them not flagged before it" in f for f in verdict.findings)
    # without the refinement: the specialist's 60 flags alone
    frame, _ = fuse_and_decide(ds, [dyn, spec], FusionConfig(refine=False))
    assert frame["is_backdoor"].sum() == 60
    # no feature coordinates (an older result): no refinement, same as off
    del dyn.arrays["feature_pcs"]
    assert fuse_and_decide(ds, [dyn, spec])[0]["is_backdoor"].sum() == 60


def test_the_refinement_corrects_the_split_pick_but_never_acts_in_unnamed_classes():
    ds = _ds([200, 100, 100, 100, 100])
    n = len(ds)
    pcs = np.zeros((n, 8))
    pcs[:200] = _two_populations(100, 100, shift=5.0, seed=3)
    pcs[200:300] = _two_populations(70, 30, shift=5.0, seed=4)  # a structured unnamed class
    post = np.zeros(n)
    post[130:200] = 0.9  # the split found 70 of the 100 injected rows
    post[:30] = 0.8  # and put 30 clean rows beside them
    dyn = _dynamics(ds, post, {0: 0.02})  # the split's anomalous part
    dyn.arrays["posterior_confident"] = post
    dyn.arrays["feature_pcs"] = pcs
    conf = DetectorResult("confident", np.zeros(n), np.zeros(n, bool), np.full(n, -1), {})
    frame, verdict = fuse_and_decide(ds, [dyn, conf])
    assert verdict.backdoor_classes == ["c0"]
    picked = frame["is_backdoor"].to_numpy().nonzero()[0]
    assert len(picked) == 100 and (picked >= 100).sum() >= 97 and not frame.loc[200:, "flagged"].any()
    before = fuse_and_decide(ds, [dyn, conf], FusionConfig(refine=False))[0]["is_backdoor"].to_numpy().nonzero()[0]
    assert (before >= 100).sum() <= 75


def test_class_feature_pcs_are_per_class_centred_and_skip_small_classes():
    from cleansers.dynamics import class_feature_pcs

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(130, 16)) + 3.0
    labels = np.array([0] * 100 + [1] * 30)
    feats[:50, 0] += 8.0  # class 0 holds two populations
    pcs = class_feature_pcs(feats, labels, 4, min_rows=40)
    assert pcs.shape == (130, 4) and np.allclose(pcs[:100].mean(0), 0, atol=1e-9)
    assert not pcs[100:].any()  # class 1 has fewer than min_rows rows
    # the first component carries the two populations apart
    assert abs(pcs[:50, 0].mean() - pcs[50:100, 0].mean()) > 5 * pcs[:100, 1].std()


def _second_choices(n_clean: int, n_injected: int, seed: int = 0) -> np.ndarray:
    """The detection model's best class other than the row's own label: a class's own images
    lean on one or two look-alikes (1, 2), injected images of every other class spread over
    them all (1..4)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice([1, 2], size=n_clean, p=[0.7, 0.3]), rng.integers(1, K, size=n_injected)])


def test_cluster_pick_names_the_part_whose_second_choices_spread_wider():
    from cleansers.verdict import cluster_pick, two_means

    x = _two_populations(300, 150, shift=5.0, seed=5)
    truth = np.arange(450) >= 300
    part = two_means(x)
    assert min((part == truth).mean(), (part != truth).mean()) < 0.02  # the two populations, one each side
    second = _second_choices(300, 150)
    pick, why, basis = cluster_pick(x, second, K, excess=0)
    assert basis == "spread" and (pick == truth).mean() > 0.98 and "spread wider" in why
    # no spread to tell them apart: the specialists' flags orient it, else the excess' size
    flat = np.ones(450, dtype=np.int64)
    hint = np.zeros(450, bool)
    hint[:20] = True  # specialists' flags among the first population
    pick, _, basis = cluster_pick(x, flat, K, excess=150, hint=hint)
    assert basis == "hint" and (pick != truth).mean() > 0.98
    pick, why, basis = cluster_pick(x, flat, K, excess=150)
    assert basis == "size" and (pick == truth).mean() > 0.98 and "150-row excess" in why
    pick, _, basis = cluster_pick(x, None, K, excess=0)
    assert basis == "size" and (pick == truth).mean() > 0.98  # the smaller part
    # the spread points at the 300-row part, but the class's excess is 150 rows: the size
    # vetoes the spread when the other part matches the excess (within 25%) and the spread's
    # part is off by half or more; without the veto, or without an excess, the spread decides
    inverted = _second_choices(150, 300)[np.r_[150:450, 0:150]]  # the first 300 rows spread wider
    pick, why, basis = cluster_pick(x, inverted, K, excess=150, size_veto=True)
    assert basis == "size" and (pick == truth).mean() > 0.98 and "150-row excess" in why
    pick, _, basis = cluster_pick(x, inverted, K, excess=150, size_veto=False)
    assert basis == "spread" and (pick != truth).mean() > 0.98
    pick, _, basis = cluster_pick(x, inverted, K, excess=0, size_veto=True)
    assert basis == "spread"
    pick, _, basis = cluster_pick(x, inverted, K, excess=260, size_veto=True)  # 300 is near 260: no veto
    assert basis == "spread"


def _named_by_size_only(shift: float = 5.0):
    """Class 0 is twice the median (its 100 rows 100..199 injected); the training-dynamics
    split gives no usable order (all zero), the feature coordinates and the second choices
    carry the injected rows."""
    ds = _ds([200, 100, 100, 100, 100])
    n = len(ds)
    pcs = np.zeros((n, 8))
    pcs[:200] = _two_populations(100, 100, shift=shift, seed=6)
    dyn = _dynamics(ds, np.zeros(n))
    dyn.arrays["posterior_confident"] = np.zeros(n)
    dyn.arrays["feature_pcs"] = pcs
    second = np.ones(n, dtype=np.int64)
    second[:200] = _second_choices(100, 100, seed=7)
    dyn.arrays["second_choice"] = second
    return ds, dyn


def test_a_class_named_without_a_usable_pick_is_split_in_feature_space_and_oriented():
    ds, dyn = _named_by_size_only()
    conf = DetectorResult("confident", np.zeros(len(ds)), np.zeros(len(ds), bool), np.full(len(ds), -1), {})
    frame, verdict = fuse_and_decide(ds, [dyn, conf])
    assert verdict.backdoor_classes == ["c0"]
    picked = frame["is_backdoor"].to_numpy().nonzero()[0]
    assert len(picked) == 100 and (picked >= 100).sum() >= 97
    assert any("split in two in the model's feature space" in f and "spread wider" in f for f in verdict.findings)
    # as an audit hands it over (floats, NaN where a row could not be read): the same pick
    as_floats = dyn.arrays["second_choice"].astype(np.float64)
    as_floats[-3:] = np.nan
    dyn.arrays["second_choice"] = as_floats
    assert (fuse_and_decide(ds, [dyn, conf])[0]["is_backdoor"].to_numpy() == frame["is_backdoor"].to_numpy()).all()
    # the rule off: the split's tie-broken order picks the class's first (clean) rows
    before = fuse_and_decide(ds, [dyn, conf], FusionConfig(cluster_start="off"))[0]
    assert (before["is_backdoor"].to_numpy().nonzero()[0] >= 100).sum() <= 10


def test_specialist_flags_in_the_part_that_looks_like_the_class_are_not_kept():
    """AGPD vouches for class 0 but its 60 flags sit among the class's own images (its
    reference inverted): the feature split's spread outvotes them."""
    ds, dyn = _named_by_size_only()
    n = len(ds)
    flag = np.zeros(n, bool)
    flag[:60] = True
    agpd = DetectorResult("agpd", flag.astype(float), flag, None,
                          {"class_evidence": _evidence({0: ("", "weak", 8.0)}, "agpd_z")})
    frame, verdict = fuse_and_decide(ds, [dyn, agpd])
    picked = frame["is_backdoor"].to_numpy().nonzero()[0]
    assert len(picked) == 100 and (picked >= 100).sum() >= 97
    assert not frame.loc[:59, "is_backdoor"].any()
    assert all("agpd" not in r for r in frame.loc[:59, "reasons"])
    assert any("flagged by agpd lie mostly" in f for f in verdict.findings)
    # flags that agree with the spread are kept
    flag = np.zeros(n, bool)
    flag[140:200] = True
    agpd = DetectorResult("agpd", flag.astype(float), flag, None,
                          {"class_evidence": _evidence({0: ("", "weak", 8.0)}, "agpd_z")})
    frame, verdict = fuse_and_decide(ds, [dyn, agpd])
    assert frame.loc[140:199, "is_backdoor"].all() and frame["is_backdoor"].sum() == 100
    assert not any("lie mostly" in f for f in verdict.findings)
    # a split that cuts across the flags (27 of 60 in its injected part: 45%) does not
    # contradict them: they are kept (below ``distrust_below``, 25%, they would not be)
    flag = np.zeros(n, bool)
    flag[67:127] = True
    agpd = DetectorResult("agpd", flag.astype(float), flag, None,
                          {"class_evidence": _evidence({0: ("", "weak", 8.0)}, "agpd_z")})
    frame, verdict = fuse_and_decide(ds, [dyn, agpd])
    assert frame.loc[67:126, "is_backdoor"].all() and not any("lie mostly" in f for f in verdict.findings)
    frame, verdict = fuse_and_decide(ds, [dyn, agpd], FusionConfig(distrust_below=0.5))
    assert not frame.loc[67:99, "is_backdoor"].any() and any("lie mostly" in f for f in verdict.findings)


def test_second_choice_is_the_best_class_other_than_the_label():
    from cleansers.dynamics import second_choice

    logits = np.array([[5.0, 1.0, 3.0], [0.0, 9.0, 8.0], [2.0, 2.5, 0.0]])
    assert second_choice(logits, np.array([0, 1, 1])).tolist() == [2, 2, 0]
    assert second_choice(np.zeros((0, 3)), np.zeros(0, int)).shape == (0,)


def test_refine_em_corrects_a_poor_pick_and_keeps_what_it_must():
    from cleansers.verdict import refine_em

    x = _two_populations(300, 100, shift=4.0, seed=8)
    truth = np.arange(400) >= 300
    start = np.zeros(400, bool)
    start[340:400] = True  # 60 injected rows
    start[:60] = True  # and as many clean ones: a pick only half right
    pick, rounds = refine_em(x, start, 100)
    assert pick.sum() == 100 and (pick & truth).sum() >= 95 and rounds >= 2
    keep = np.zeros(400, bool)
    keep[:5] = True
    pick, _ = refine_em(x, start, 105, keep)
    assert pick[:5].all() and pick.sum() == 105 and (pick & truth).sum() >= 95


def test_refine_em_fits_the_injected_share_when_no_count_is_known():
    """``free``: EM fits the mixing weight too and picks every row more likely injected than
    not, so a pick that holds part of the injected rows grows to all of them (a clean-label
    target with 80% of its rows poisoned, the early tail catching 60% of those); with the
    share held at the pick's count it cannot."""
    from cleansers.verdict import refine_em

    x = _two_populations(100, 400, shift=5.0, seed=12)
    truth = np.arange(500) >= 100
    start = np.zeros(500, bool)
    start[100:340] = True  # 240 of the 400 injected rows, no clean one
    held, _ = refine_em(x, start, 240)
    assert held.sum() == 240
    grown, _ = refine_em(x, start, 240, free=True)
    assert (grown & truth).sum() >= 390 and (grown & ~truth).sum() <= 5, (grown & truth).sum()
    # one population: a free fit would cut it anywhere, away from the rows the evidence was
    # about; then the share stays held at the count
    flat = np.random.default_rng(13).normal(size=(500, 8))
    assert refine_em(flat, start, 240, free=True)[0].sum() == 240


def test_a_clean_label_class_named_without_an_excess_has_its_injected_share_fitted():
    """Class 0 holds no excess rows (clean-label), 160 of its 200 rows carry a trigger, and
    its early-learning tail (strong) caught 100 of them: the refinement fits how many rows
    are injected and flags the 160; ``free_share=False`` holds the pick at the tail's 100."""
    ds = _ds([200, 200, 200, 200, 200])
    n = len(ds)
    rng = np.random.default_rng(14)
    signals = rng.normal(size=(n, 5))
    signals[100:200, 2] += 6.0  # the early tail: 100 injected rows learned far earlier than the rest
    signals[:40, 1] = -3.0  # and the class is not injected through and through
    pcs = rng.normal(size=(n, 8))
    pcs[:200] = _two_populations(40, 160, shift=6.0, seed=15)
    dyn = DetectorResult("dynamics", np.zeros(n), np.zeros(n, bool), None, {"class_evidence": [
        {"class": 0, "signal": "early_tail", "value": 0.5, "threshold": 0.1, "strength": "strong", "detail": ""}]})
    dyn.arrays.update(signals=signals, feature_pcs=pcs, posterior_confident=np.zeros(n))
    # the class-split signal off: the pick to refine is the early tail's (as on the held-out
    # SIG 8% cell, whose split z of 9.97 stayed under its bar)
    frame, verdict = fuse_and_decide(ds, [dyn], FusionConfig(split_z=0))
    assert verdict.backdoor_classes == ["c0"]
    flagged = frame["is_backdoor"].to_numpy()
    assert flagged[40:200].sum() >= 155 and flagged[:40].sum() <= 3 and not flagged[200:].any(), flagged[:200].sum()
    held = fuse_and_decide(ds, [dyn], FusionConfig(split_z=0, free_share=False))[0]["is_backdoor"].to_numpy()
    assert 95 <= held[:200].sum() <= 105, held[:200].sum()  # the tail: its 100 rows and a stray one


def test_a_class_that_splits_far_more_cleanly_than_the_others_is_weak_evidence():
    """A clean-label target (SIG poisons half of class 0's own images; no excess rows): its
    feature coordinates hold two populations, every other class one. With the early-learning
    tail under its strong bar the split is the second weak signal that names the class, and
    its injected part is flagged; alone it names nothing."""
    ds = _ds([200, 200, 200, 200, 200])
    n = len(ds)
    rng = np.random.default_rng(9)
    pcs = rng.normal(size=(n, 8))
    pcs[:200] = _two_populations(100, 100, shift=6.0, seed=10)
    dyn = _dynamics(ds, np.zeros(n), {0: 0.2})  # early tail weak (under the strong bar)
    dyn.arrays["posterior_confident"] = np.zeros(n)
    dyn.arrays["feature_pcs"] = pcs
    second = np.ones(n, dtype=np.int64)
    second[:200] = _second_choices(100, 100, seed=11)
    dyn.arrays["second_choice"] = second
    early = np.zeros((n, 5))
    dyn.arrays["signals"] = early
    frame, verdict = fuse_and_decide(ds, [dyn])
    split = [s for s in verdict.classes[0].signals if s.name == "feature_split"][0]
    assert split.fired and split.value >= 10
    assert not any(s.fired for c in verdict.classes[1:] for s in c.signals if s.name == "feature_split")
    assert verdict.backdoor_classes == ["c0"]
    picked = frame["is_backdoor"].to_numpy().nonzero()[0]
    assert (picked >= 100).sum() >= 95 and (picked < 100).sum() <= 5 and (picked < 200).all()
    # the split alone (no early tail): one weak signal, nothing named
    dyn.info["class_evidence"] = []
    assert fuse_and_decide(ds, [dyn])[1].backdoor_classes == []
    # switched off
    frame, verdict = fuse_and_decide(ds, [dyn], FusionConfig(split_z=0))
    assert not any(s.name == "feature_split" for s in verdict.classes[0].signals)


def test_a_named_class_learned_early_and_surely_through_and_through_is_flagged_whole():
    """A clean-label attack on every image of class 0 (SIG at 10% of a balanced set): all its
    rows sit above the other classes' median on every training-dynamics view, so the whole
    class is flagged, not the early tail or a part of a split; a named class with half of
    its rows there (SIG at 5%) is split as before; nothing happens in an unnamed class."""
    ds = _ds([200, 200, 200, 200, 200])
    n = len(ds)
    rng = np.random.default_rng(4)
    signals = rng.normal(size=(n, 5))
    signals[:200] = rng.normal(loc=3.0, size=(200, 5))  # class 0: every row learned early and surely
    signals[:3, 1] = -1.0  # a few below the others' median on one view: 1.5% of the class
    dyn = DetectorResult("dynamics", np.zeros(n), np.zeros(n, bool), None, {"class_evidence": [
        {"class": 0, "signal": "early_tail", "value": 0.6, "threshold": 0.1, "strength": "strong", "detail": ""}]})
    dyn.arrays["signals"] = signals
    frame, verdict = fuse_and_decide(ds, [dyn])
    assert verdict.backdoor_classes == ["c0"]
    flagged = frame["is_backdoor"].to_numpy()
    assert flagged[:200].all() and not flagged[200:].any()
    assert any("through and through" in f for f in verdict.findings)
    # switched off: the early-tail rows only (those above the other classes' 99th percentile)
    frame, verdict = fuse_and_decide(ds, [dyn], FusionConfig(whole_class_below=0))
    assert 0 < frame["is_backdoor"].to_numpy()[:200].sum() < 200
    # half of the class above the others (SIG at 5%): not whole
    half = signals.copy()
    half[100:200] = rng.normal(size=(100, 5))
    dyn.arrays["signals"] = half
    frame, verdict = fuse_and_decide(ds, [dyn])
    assert frame["is_backdoor"].to_numpy()[:200].sum() < 150
    assert not any("through and through" in f for f in verdict.findings)
    # a class like that which nothing named: not flagged
    dyn.arrays["signals"] = signals
    dyn.info["class_evidence"] = []
    assert not fuse_and_decide(ds, [dyn])[0]["is_backdoor"].any()


def test_the_report_summary_names_an_in_memory_dataset():
    from pipelines.report import summary_rows

    manifest = {"dataset": {"source": "", "fingerprint": "abc"},
                "rows": {"in": 4, "out": 4, "flagged": 1, "unreadable": 0, "resized": 0, "converted_to_rgb": 0}}
    assert dict(summary_rows(manifest))["dataset"] == "(in memory, not read from a file)"
    manifest["dataset"]["source"] = "/data/train.parquet"
    assert dict(summary_rows(manifest))["dataset"] == "/data/train.parquet"
