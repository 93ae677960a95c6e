"""Fusion's threshold logic and the detection metrics, on fixed inputs."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cleansers.base import DetectorResult
from cleansers.fusion import FusionConfig, calibrate, fuse
from pipelines.dataset import ImageDataset
from pipelines.metrics import audit_metrics, auroc, detection_metrics


def _ds(n: int, unreadable=None) -> ImageDataset:
    return ImageDataset(np.zeros((n, 4, 4, 3), np.uint8), np.arange(n) % 2, ["a", "b"],
                        [f"s{i}" for i in range(n)], unreadable)


def test_auroc_matches_definition_with_ties_and_nan():
    pos = np.array([1, 1, 0, 0, 0], bool)
    assert auroc(pos, np.array([0.9, 0.8, 0.1, 0.2, 0.3])) == 1.0
    assert auroc(pos, np.array([0.1, 0.2, 0.9, 0.8, 0.7])) == 0.0
    assert auroc(pos, np.array([0.5, 0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auroc(pos, np.array([0.9, np.nan, 0.1, 0.95, 0.3])) == pytest.approx(2 / 3)
    assert np.isnan(auroc(np.zeros(3, bool), np.arange(3.0)))


def test_detection_metrics_counts():
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    flag = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    m = detection_metrics(truth, flag)
    assert m["tpr"] == pytest.approx(2 / 3) and m["fpr"] == pytest.approx(1 / 5)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)


def test_calibrated_scores_put_flagged_rows_above_half_in_score_order():
    r = DetectorResult("d", np.array([5.0, 1.0, 3.0, 9.0, np.nan]), np.array([0, 0, 0, 1, 0], bool))
    c = calibrate(r)
    assert c[3] > 0.5 and (c[:3] < 0.5).all() and np.isnan(c[4])
    assert c[1] < c[2] < c[0]


def test_fuse_union_reasons_unreadable_and_suggestions():
    ds = _ds(5, unreadable=[False, False, False, False, True])
    a = DetectorResult("a", [0.1, 0.9, 0.2, 0.8, np.nan], [0, 1, 0, 1, 0])
    b = DetectorResult("b", [0.7, 0.1, 0.2, 0.9, np.nan], [1, 0, 0, 1, 0], suggested_label=[1, -1, -1, 0, -1])
    f = fuse(ds, [a, b])
    assert f["flagged"].tolist() == [True, True, False, True, True]
    assert f["reasons"].tolist()[1] == "a" and f["reasons"][4] == "unreadable"
    assert set(f["reasons"][3].split(",")) == {"a", "b"}
    assert f["suggested_label"].tolist() == [1, -1, -1, 0, -1]
    assert f["dirty_score"][4] == 1.0
    two = fuse(ds, [a, b], FusionConfig(min_votes=2))
    assert two["flagged"].tolist() == [False, False, False, True, True]
    assert len(f) == len(ds) and list(f["sample_id"]) == list(ds.sample_ids)


def test_audit_metrics_splits_poisoned_and_noisy():
    scores = pd.DataFrame({"sample_id": ["a", "b", "c", "d"], "d_flag": [True, False, True, False],
                           "d_score": [0.9, 0.2, 0.8, 0.1], "flagged": [True, False, True, False],
                           "dirty_score": [0.9, 0.2, 0.8, 0.1]})
    truth = pd.DataFrame({"sample_id": ["d", "c", "b", "a"], "is_poisoned": [False, False, True, True],
                          "is_noisy": [False, True, False, False], "attack": ["", "symmetric", "badnets", "badnets"],
                          "original_label": [0, 0, 0, 0]})
    m = audit_metrics(scores, truth, ["d"])
    assert m["d"]["all"]["tpr"] == pytest.approx(2 / 3)
    assert m["d"]["poisoned"]["tpr"] == 0.5 and m["d"]["noisy"]["tpr"] == 1.0
    assert m["d"]["attack:badnets"]["n_dirty"] == 2 and m["fused"]["all"]["fpr"] == 0.0


def test_quota_detectors_count_only_with_agreement():
    ds = _ds(4)
    agpd = DetectorResult("agpd", [0.9, 0.1, 0.1, 0.1], [1, 0, 0, 0])
    spectral = DetectorResult("spectral", [0.1, 0.9, 0.8, 0.1], [0, 1, 1, 0])
    ac = DetectorResult("activation_clustering", [0.1, 0.1, 0.9, 0.1], [0, 0, 1, 0])
    f = fuse(ds, [agpd, spectral, ac])
    assert f["flagged"].tolist() == [True, False, True, False]
    assert f["reasons"][0] == "agpd" and f["reasons"][1] == ""
    assert set(f["reasons"][2].split(",")) == {"spectral", "activation_clustering"}
    assert (f["dirty_score"][[0, 2]] >= 0.5).all() and (f["dirty_score"][[1, 3]] < 0.5).all()
    union = fuse(ds, [agpd, spectral, ac], FusionConfig(needs_agreement=()))
    assert union["flagged"].tolist() == [True, True, True, False]


def test_a_lone_quota_detector_keeps_its_own_decision():
    """An audit that ran only a quota detector (a ranker: spectral signatures) flags what it
    flagged; once a second detector ran, a lone quota flag needs agreement again."""
    ds = _ds(4)
    spectral = DetectorResult("spectral", [0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])
    alone = fuse(ds, [spectral])
    assert alone["flagged"].tolist() == [True, True, False, False]
    assert alone["reasons"].tolist() == ["spectral", "spectral", "", ""]
    ac = DetectorResult("activation_clustering", [0.9, 0.1, 0.1, 0.8], [1, 0, 0, 1])
    both = fuse(ds, [spectral, ac])
    assert both["flagged"].tolist() == [True, False, False, False]
    agpd = DetectorResult("agpd", [0.1, 0.1, 0.9, 0.1], [0, 0, 1, 0])
    assert fuse(ds, [spectral, agpd])["flagged"].tolist() == [False, False, True, False]
    assert fuse(ds, [spectral], FusionConfig(agreement_votes=3))["flagged"].tolist() == [True, True, False, False]
