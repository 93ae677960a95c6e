"""Model-based detectors (AGPD, spectral signatures, activation clustering, confident
learning) on real images with simulated dirt, plus their building blocks. CPU only: the
scikit-learn digits (1,797 real images) at 16x16, the small CNN, few epochs. One detection
model is trained per dirty dataset and shared by the detectors (that sharing is tested)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cleansers  # noqa: F401  (registers the detectors)
from cleansers import DEFAULT_DETECTORS
from cleansers.agpd import js_divergence, js_stop, robust_z
from cleansers.base import DETECTORS, AuditContext
from cleansers.confident import confident_labels, find_label_issues
from cleansers.detection_model import activation_gradients, main_path_convs, stratified_folds
from cleansers.fusion import fuse
from cleansers.run import run_detector
from cleansers.sentinet import window_positions
from pipelines.embedded import load_digits_rgb
from pipelines.metrics import auroc, detection_metrics
from pipelines.simulate import SimulationSpec, simulate
from trainers.models import build_model

EPOCHS = 6  # the shared detection model (small CNN, 16x16 digits)
CL_EPOCHS = 4  # confident learning's 3 fold models
FUSED_CLEAN_FPR = 0.03
ABL_TPR = 0.5


@pytest.fixture(scope="module")
def digits():
    return load_digits_rgb(size=16)


@pytest.fixture(scope="module")
def badnets(digits):
    """10% BadNets (3x3 white patch) to class 0, one context shared by the detectors."""
    sim = simulate(digits, SimulationSpec(attack="badnets", poison_rate=0.1, target=0, seed=1))
    ctx = AuditContext(device="cpu", seed=0, expected_dirty_rate=0.1)
    return sim, ctx, {}


def _run(name, sim, ctx, cache, **opts):
    if name not in cache:
        cache[name] = run_detector(name, sim.dataset, ctx, dict(epochs=EPOCHS, **opts))
    return cache[name]


def test_all_detectors_registered():
    assert {"agpd", "spectral", "activation_clustering", "confident", "abl"} <= set(DETECTORS.names())
    assert set(DEFAULT_DETECTORS) <= set(DETECTORS.names())


# ----------------------------------------------------------------------------- building blocks


def test_main_path_convs_are_the_16_block_convs_of_preact_resnet18():
    convs = main_path_convs(build_model("preact_resnet18", 10, seed=0))
    names = [n for n, _ in convs]
    assert len(names) == 16 and names[0] == "layer1.0.conv1" and names[-1] == "layer4.1.conv2"
    assert not any("shortcut" in n for n in names)
    assert [n for n, _ in main_path_convs(build_model("small_cnn", 10, seed=0))] == ["conv2.0", "conv3.0", "conv4.0"]


def test_batched_activation_gradients_equal_per_sample_gradients():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, (16, 16), seed=0).eval()
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 3, 3, 9, 1, 2])
    layers = [m for _, m in main_path_convs(model)]
    batched = activation_gradients(model, images, labels, layers, torch.device("cpu"), batch_size=4)
    for i in (0, 5):
        single = activation_gradients(model, images[i:i + 1], labels[i:i + 1], layers, torch.device("cpu"))
        for b, s in zip(batched, single):
            torch.testing.assert_close(b[i], s[0], rtol=1e-4, atol=1e-6)


def test_robust_z_and_js_rule():
    rho = np.array([[0.10, 0.11, 0.09, 0.10, 0.60, 0.12]])
    z = robust_z(rho)
    assert z.argmax() == 4 and z[0, 4] > math.e ** 2 and (z >= 0).all()
    assert robust_z(np.full((1, 5), 0.3)).max() == 0.0
    p = np.array([0.5, 0.5, 0.0])
    assert js_divergence(p, p) == 0.0 and js_divergence(p, np.array([0.0, 0.0, 1.0])) == pytest.approx(math.log(2))
    d = [0.5, 0.4, 0.3, 0.01, 0.01, 0.01, 0.2, 0.3]
    assert js_stop(d, window=3, k=5.0) == 3


def test_confident_learning_rule_on_fixed_probabilities():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.3, 0.7], [0.7, 0.3]])
    # thresholds: class 0 mean p0 = 0.6, class 1 mean p1 = 0.6
    assert confident_labels(probs, labels).tolist() == [0, 0, 1, 1, 1, 0]
    issues, suggested = find_label_issues(probs, labels, "confident_learning")
    assert issues.tolist() == [False, False, True, False, False, True]
    assert suggested[issues].tolist() == [1, 0]
    pruned, _ = find_label_issues(probs, labels)  # the default, prune_by_noise_rate
    assert pruned.tolist() == issues.tolist()


def test_stratified_folds_balance_classes():
    labels = np.repeat(np.arange(3), 10)
    fold = stratified_folds(labels, 5, seed=0)
    for c in range(3):
        assert np.bincount(fold[labels == c], minlength=5).tolist() == [2] * 5


# ----------------------------------------------------------------------------- on real data


def test_agpd_finds_the_target_class_and_the_poisoned_rows(badnets):
    sim, ctx, cache = badnets
    r = _run("agpd", sim, ctx, cache)
    poisoned = sim.truth["is_poisoned"].to_numpy()
    assert r.info["target_class_ids"] == [0], r.info
    assert r.info["filtering"]["0"]["stop_rule"] == "midpoint"  # ~350 rows: below js_min_rows
    m = detection_metrics(poisoned, r.flag, r.score)
    # measured: AUROC 0.999, TPR 0.983, FPR 0.009 (177 of 180 poisoned, 15 clean flagged)
    assert m["auroc"] >= 0.98 and m["tpr"] >= 0.9 and m["fpr"] <= 0.02, m
    # no trusted set: the finding says the reference came from the data, and what to do
    assert r.info["reference"].startswith("auto") and "pass --trusted" in r.info["finding"]


def test_agpd_takes_its_reference_from_a_trusted_set(digits, badnets):
    sim, ctx, cache = badnets
    trusted = digits.subset(np.concatenate([np.flatnonzero(digits.labels == c)[:10] for c in range(10)]))
    with_trusted = AuditContext(device="cpu", seed=0, trusted=trusted, model_cache=ctx.model_cache)
    r = run_detector("agpd", sim.dataset, with_trusted, {"epochs": EPOCHS})
    assert r.info["reference"] == "trusted" and "pass --trusted" not in r.info["finding"], r.info
    # (no bound on the result: with these 10 rows per class AGPD picks another layer and finds
    # no target on this seed; docs/benchmarks.md, "AGPD's clean reference", has the seeds)


@pytest.fixture(scope="module")
def clean_audit(digits):
    """The default detectors on the clean digits (one context: one model, one set of folds)."""
    ctx = AuditContext(device="cpu", seed=0, expected_dirty_rate=0.1)
    opts = {"agpd": {"epochs": EPOCHS}, "confident": {"folds": 3, "epochs": CL_EPOCHS}, "sentinet": {"epochs": EPOCHS}}
    return [run_detector(n, digits, ctx, opts[n]) for n in DEFAULT_DETECTORS]


def test_agpd_declares_clean_data_clean(clean_audit):
    r = clean_audit[0]
    assert r.name == "agpd" and r.info["target_classes"] == [] and r.flag.sum() == 0, r.info
    assert r.info["finding"].startswith("no target class") and r.info["finding"].endswith("declared clean")


def test_default_detectors_keep_the_fused_fpr_low_on_clean_data(digits, clean_audit):
    frame = fuse(digits, clean_audit)
    fpr = frame["flagged"].mean()
    assert fpr <= FUSED_CLEAN_FPR, (fpr, [int(r.flag.sum()) for r in clean_audit])


def test_window_positions_cover_the_edges():
    assert window_positions(8, 8, 4, 2) == [(r, c) for r in (0, 2, 4) for c in (0, 2, 4)]
    assert window_positions(7, 5, 4, 2)[-1] == (3, 1)  # flush with the bottom-right corner


def test_sentinet_finds_the_patch_trigger_rows_and_their_window(badnets):
    sim, ctx, cache = badnets
    poisoned = sim.truth["is_poisoned"].to_numpy()
    r = _run("sentinet", sim, ctx, cache)
    m = detection_metrics(poisoned, r.flag, r.score)
    # measured (digits 16x16, 4x4 windows, the shared 6-epoch small CNN): TPR 1.0, FPR 0,
    # AUROC 1.0 with either way of locating the region
    assert m["tpr"] >= 0.95 and m["fpr"] <= 0.005 and m["auroc"] >= 0.99, m
    assert list(r.info["flagged_per_class"]) == ["0"]
    top = r.info["top_windows"][0]  # the 3x3 patch sits in the bottom-right corner
    assert top["top"] + top["size"] == 16 and top["left"] + top["size"] == 16, r.info["top_windows"]
    assert r.info["model"]["trained_now"] is False or "agpd" not in cache
    occl = run_detector("sentinet", sim.dataset, ctx, {"epochs": EPOCHS, "locate": "occlusion"})
    assert detection_metrics(poisoned, occl.flag)["tpr"] >= 0.95


def test_sentinet_flags_almost_nothing_on_clean_data(clean_audit):
    r = next(r for r in clean_audit if r.name == "sentinet")
    assert r.flag.mean() <= 0.005, r.info  # measured: 1 row of 1,797


def test_detection_model_is_trained_once_and_shared(badnets):
    sim, ctx, cache = badnets
    first = _run("agpd", sim, ctx, cache)
    spectral = _run("spectral", sim, ctx, cache)
    ac = _run("activation_clustering", sim, ctx, cache)
    models = [k for k in ctx.model_cache if k[0] == "model" and len(k) == 4]
    assert len(models) == 1
    assert first.info["model"]["trained_now"] is True
    assert spectral.info["model"]["trained_now"] is False and ac.info["model"]["trained_now"] is False
    assert spectral.info["model"]["train_seconds"] == first.info["model"]["train_seconds"]


def test_spectral_and_activation_clustering_rank_poisoned_rows_high(badnets):
    sim, ctx, cache = badnets
    poisoned = sim.truth["is_poisoned"].to_numpy()
    spectral = _run("spectral", sim, ctx, cache)
    # measured AUROC 0.49 on this model (small CNN, 6 epochs): spectral signatures do not
    # separate BadNets rows here; only the by-design flag share is asserted
    assert 0.3 <= auroc(poisoned, spectral.score) <= 1.0
    frac = spectral.flag[sim.dataset.labels == 3].mean()  # 1.5 * eps of each class, by design
    assert frac == pytest.approx(0.15, abs=0.01)
    ac = _run("activation_clustering", sim, ctx, cache)
    assert auroc(poisoned, ac.score) >= 0.75  # measured 0.837
    fired = [k for k, v in ac.info["per_class"].items() if v["flagged"]]
    assert "0" in fired
    m = detection_metrics(poisoned, ac.flag)
    assert m["tpr"] >= 0.8, (m, ac.info["per_class"])


def test_confident_learning_finds_wrong_labels_and_suggests_the_original(digits):
    sim = simulate(digits, SimulationSpec(noise="symmetric", noise_rate=0.1, seed=2))
    ctx = AuditContext(device="cpu", seed=0)
    r = run_detector("confident", sim.dataset, ctx, {"folds": 3, "epochs": CL_EPOCHS})
    noisy = sim.truth["is_noisy"].to_numpy()
    m = detection_metrics(noisy, r.flag, r.score)
    # measured (3 folds x 4 epochs, default prune_by_noise_rate): AUROC 0.999, TPR 0.900,
    # FPR 0.0062, precision 0.942 (the confident_learning filter: TPR 0.750, FPR 0)
    assert m["auroc"] >= 0.97 and m["tpr"] >= 0.65 and m["fpr"] <= 0.02, m
    caught = noisy & r.flag
    original = sim.truth["original_label"].to_numpy()
    assert (r.suggested_label[caught] == original[caught]).mean() >= 0.9
    assert (r.suggested_label[~r.flag] == -1).all()
    again = run_detector("confident", sim.dataset, ctx, {"folds": 3, "epochs": CL_EPOCHS})
    assert again.info["trained_now"] is False and np.array_equal(again.flag, r.flag)
    assert r.info["withheld"] is False and r.info["issues_found"] == r.flag.sum()
    # the reliability gate: below min_accuracy the scores stay and the flags are withheld
    gated = run_detector("confident", sim.dataset, ctx, {"folds": 3, "epochs": CL_EPOCHS, "min_accuracy": 0.99})
    assert gated.info["withheld"] is True and gated.info["issues_found"] == r.flag.sum() > 0
    assert gated.flag.sum() == 0 and np.array_equal(gated.score, r.score)
    assert "withheld: out-of-sample accuracy" in gated.info["finding"]


def test_fusion_of_the_detectors_keeps_specialists_and_needs_agreement_for_quotas(badnets):
    sim, ctx, cache = badnets
    results = [_run(n, sim, ctx, cache) for n in ("agpd", "spectral", "activation_clustering")]
    frame = fuse(sim.dataset, results)
    poisoned = sim.truth["is_poisoned"].to_numpy()
    m = detection_metrics(poisoned, frame["flagged"].to_numpy(), frame["dirty_score"].to_numpy())
    assert m["tpr"] >= 0.8 and m["fpr"] <= 0.05, m
    lone_spectral = results[1].flag & ~results[0].flag & ~results[2].flag
    assert not frame["flagged"].to_numpy()[lone_spectral].any()


def test_abl_alone_flags_in_the_fusion(badnets):
    """ABL is a quota detector: with other detectors it needs agreement, but an audit that ran
    only ABL keeps ABL's own decision (the CLI's ``--detectors abl``)."""
    sim, ctx, cache = badnets
    r = _run("abl", sim, ctx, cache, lr=0.1, augment=False)
    frame = fuse(sim.dataset, [r])
    assert np.array_equal(frame["flagged"].to_numpy(), r.flag) and r.flag.sum() == round(0.1 * len(r.flag))
    poisoned = sim.truth["is_poisoned"].to_numpy()
    m = detection_metrics(poisoned, frame["flagged"].to_numpy(), frame["dirty_score"].to_numpy())
    assert m["tpr"] >= ABL_TPR, m
