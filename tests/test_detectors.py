"""Model-based detectors (AGPD, training dynamics, confident learning, SentiNet, spectral
signatures, activation clustering, ABL) on real images with simulated dirt, their building
blocks, and the default audit's verdict. CPU only: scikit-learn's digits (1,797 real images)
at 16x16, the small CNN, few epochs; one detection model per dirty dataset, shared.

Quality bounds here hold with a margin over what was measured with model seeds 0-4 and 1
and 2 threads (9 runs; the seed-to-seed spread stands in for another CPU's rounding, which
cannot be run here): the measured range is beside each bound. Where a tiny model gives no stable figure the test
asserts the mechanism on planted data instead, and the figure lives in
benchmarks/detectors.py."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import cleansers  # noqa: F401  (registers the detectors)
from cleansers import DEFAULT_DETECTORS
from cleansers.agpd import AGPDConfig, iterative_filter, js_divergence, js_stop, robust_z
from cleansers.base import DETECTORS, AuditContext
from cleansers.confident import find_label_issues
from cleansers.detection_model import activation_gradients, main_path_convs, stratified_folds
from cleansers.dynamics import knn_agreement, split_class
from cleansers.fusion import fuse_and_decide
from cleansers.run import run_detector
from cleansers.sentinet import window_positions
from pipelines.embedded import load_digits_rgb
from pipelines.metrics import auroc, detection_metrics
from pipelines.simulate import SimulationSpec, simulate
from trainers.models import build_model

EPOCHS = 6  # the shared detection model (small CNN, 16x16 digits)


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
    assert {"agpd", "dynamics", "spectral", "activation_clustering", "confident", "abl", "sentinet"} <= set(
        DETECTORS.names())
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


def test_agpd_class_evidence_is_strong_only_with_the_published_model():
    from cleansers.agpd import class_evidence

    z = np.array([0.5, 1.0, 9.0, 2.0])
    strength = lambda ev: [e["strength"] for e in ev]  # noqa: E731
    assert strength(class_evidence(z, [2], "z", AGPDConfig(), "preact_resnet18")) == ["none", "none", "strong", "none"]
    assert strength(class_evidence(z, [2], "z", AGPDConfig(), "small_cnn")) == ["none", "none", "weak", "none"]
    assert strength(class_evidence(z, [1], "fallback_rho", AGPDConfig(), "preact_resnet18")) == ["none"] * 4


def test_agpd_filtering_separates_a_planted_gradient_cluster():
    """AGPD's step 4 on planted gradients: 300 clean rows around one direction, 100 poisoned
    rows around another; the filtering flags the poisoned cluster and nothing else."""
    rng = np.random.default_rng(0)
    d = 64
    clean_dir, poison_dir = rng.normal(size=d), rng.normal(size=d)
    clean = clean_dir + 0.6 * rng.normal(size=(300, d))
    poison = poison_dir + 0.6 * rng.normal(size=(100, d))
    g = torch.as_tensor(np.concatenate([clean, poison]))
    g0 = torch.as_tensor(clean[:10].mean(0))
    cos0 = torch.nn.functional.normalize(g, dim=1) @ torch.nn.functional.normalize(g0, dim=0)
    flag, score, info = iterative_filter(g, g0, int(torch.argmin(cos0)), AGPDConfig())
    truth = np.r_[np.zeros(300, bool), np.ones(100, bool)]
    assert flag[truth].mean() >= 0.95 and flag[~truth].mean() <= 0.01, info
    assert auroc(truth, score) >= 0.99


def test_cleanlab_label_issues_on_fixed_probabilities():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    probs = np.full((120, 3), 0.05)
    probs[np.arange(120), labels] = 0.9
    wrong = np.array([3, 50, 90, 100])  # the model is sure these rows are of the next class
    probs[wrong] = 0.05
    probs[wrong, (labels[wrong] + 1) % 3] = 0.9
    probs = probs + 0.01 * rng.random(probs.shape)
    probs /= probs.sum(1, keepdims=True)
    issues, suggested = find_label_issues(probs, labels)
    assert issues.nonzero()[0].tolist() == wrong.tolist()
    assert suggested[wrong].tolist() == ((labels[wrong] + 1) % 3).tolist()


def test_knn_agreement_and_the_split_on_planted_features():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 50)
    feats = np.where(labels[:, None] == 0, 1.0, -1.0) * np.ones((100, 4)) + 0.1 * rng.normal(size=(100, 4))
    feats[:2] *= -1  # two rows of class 0 sit among class 1 (each other's only same-label neighbour)
    agree = knn_agreement(feats, labels, k=10, chunk=7)
    assert (agree[:2] <= 0.1).all() and agree[2:].min() >= 0.8, agree
    # a class whose 40 "injected" rows are learned far better than its 60 others; the
    # anomalous part is the one far from the other classes' profiles
    x = np.r_[rng.normal(0, 1, (60, 5)), rng.normal(6, 1, (40, 5))]
    others = rng.normal(0, 0.5, (8, 5))
    post, info = split_class(x, others, restarts=2, seed=0)
    assert info["anomalous_rows"] == 40 and (post[60:] > 0.9).all() and (post[:60] < 0.1).all()


def test_stratified_folds_balance_classes():
    labels = np.repeat(np.arange(3), 10)
    fold = stratified_folds(labels, 5, seed=0)
    for c in range(3):
        assert np.bincount(fold[labels == c], minlength=5).tolist() == [2] * 5


def test_window_positions_cover_the_edges():
    assert window_positions(8, 8, 4, 2) == [(r, c) for r in (0, 2, 4) for c in (0, 2, 4)]
    assert window_positions(7, 5, 4, 2)[-1] == (3, 1)  # flush with the bottom-right corner


# ----------------------------------------------------------------------------- on real data


def test_sentinet_finds_the_patch_trigger_rows_and_their_window(badnets):
    sim, ctx, cache = badnets
    poisoned = sim.truth["is_poisoned"].to_numpy()
    r = _run("sentinet", sim, ctx, cache)
    m = detection_metrics(poisoned, r.flag, r.score)
    # measured (seeds 0-4 x 1/2 threads): TPR 0.978-1.0, FPR 0-0.001 (a stray row in
    # another class in 4 of 9 runs), AUROC 0.985-1.0
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.01 and m["auroc"] >= 0.95, m
    per_class = r.info["flagged_per_class"]
    assert max(per_class, key=per_class.get) == "0" and per_class["0"] >= 0.95 * sum(per_class.values())
    top = r.info["top_windows"][0]  # the 3x3 patch sits in the bottom-right corner
    assert top["top"] + top["size"] == 16 and top["left"] + top["size"] == 16, r.info["top_windows"]
    strong = [e["class"] for e in r.info["class_evidence"] if e["strength"] == "strong"]
    assert strong == [0]


def test_dynamics_records_how_rows_were_learned_and_splits_the_target(badnets):
    sim, ctx, cache = badnets
    r = _run("dynamics", sim, ctx, cache)
    n = len(sim.dataset)
    assert r.arrays["signals"].shape == (n, 5) and np.isfinite(r.arrays["signals"]).all()
    assert r.flag.sum() == 0  # a ranker: the verdict decides
    # class 0 (the target) is fitted earliest: its early-tail share was 0.23-0.35 (seeds 0-4 x
    # 1/2 threads; the other classes' at most 0.04). Inside class 0 the split does not tell the
    # patch rows from digit 0's easy clean rows at this scale (AUROC 0.43-0.87): SentiNet
    # flags them in the verdict
    ev = {e["class"]: e for e in r.info["class_evidence"]}
    assert {e["signal"] for e in ev.values()} == {"early_tail"}
    assert max(ev, key=lambda c: ev[c]["value"]) == 0 and ev[0]["strength"] != "none", ev
    assert r.info["model"]["trained_now"] is False or "agpd" not in cache


def test_detection_model_is_trained_once_and_shared(badnets):
    sim, ctx, cache = badnets
    first = _run("agpd", sim, ctx, cache)
    spectral = _run("spectral", sim, ctx, cache)
    ac = _run("activation_clustering", sim, ctx, cache)
    models = [k for k in ctx.model_cache if k[0] == "model" and len(k) == 4]
    assert len(models) == 1
    sharing = [r for r in cache.values() if "model" in r.info and r.name != "abl"]
    assert sum(r.info["model"]["trained_now"] for r in sharing) == 1, [r.name for r in sharing]
    assert spectral.info["model"]["trained_now"] is False and ac.info["model"]["trained_now"] is False
    assert len({r.info["model"]["train_seconds"] for r in sharing}) == 1
    # with the small CNN, AGPD's published rule is weak evidence (strong only with PreAct-ResNet18)
    assert first.info["model"]["arch"] == "small_cnn"
    assert {e["strength"] for e in first.info["class_evidence"]} <= {"weak", "none"}


def test_spectral_flags_its_share_by_design_and_activation_clustering_fires_on_the_target(badnets):
    sim, ctx, cache = badnets
    spectral = _run("spectral", sim, ctx, cache)
    frac = spectral.flag[sim.dataset.labels == 3].mean()  # 1.5 * eps of each class, by design
    assert frac == pytest.approx(0.15, abs=0.01)
    ac = _run("activation_clustering", sim, ctx, cache)
    assert "0" in [k for k, v in ac.info["per_class"].items() if v["flagged"]], ac.info["per_class"]


def test_confident_finds_wrong_labels_with_few_false_flags_and_suggests_the_original(digits):
    sim = simulate(digits, SimulationSpec(noise="symmetric", noise_rate=0.1, seed=2))
    ctx = AuditContext(device="cpu", seed=0)
    r = run_detector("confident", sim.dataset, ctx, {"epochs": EPOCHS})
    noisy = sim.truth["is_noisy"].to_numpy()
    m = detection_metrics(noisy, r.flag, r.score)
    # measured (seeds 0-4 x 1/2 threads): TPR 0.62-0.74, FPR 0, AUROC 0.999-1.0; suggested
    # label right for 0.98-1.0 of the caught rows
    assert m["auroc"] >= 0.95 and m["tpr"] >= 0.4 and m["fpr"] <= 0.01, m
    caught = noisy & r.flag
    original = sim.truth["original_label"].to_numpy()
    assert (r.suggested_label[caught] == original[caught]).mean() >= 0.8
    assert (r.suggested_label[~r.flag] == -1).all()
    assert r.info["withheld"] is False and r.info["strict_issues"] <= r.flag.sum() <= r.info["cleanlab_issues"]
    # on the CPU it reads a model of its own, trained with crop + flip
    assert r.info["model"]["which"] == "augmented" and r.info["model"]["crop"] is True
    # 10% wrong labels: the strict bars alone flag over 1% of the rows, so the p(label) bar is
    # loosened; without the loosening exactly the strict rows are flagged
    assert r.info["loose"] is True and r.info["bars"]["max_confidence"] == 0.10
    strict_only = run_detector("confident", sim.dataset, ctx, {"epochs": EPOCHS, "loose_after": 0})
    assert strict_only.info["loose"] is False and strict_only.flag.sum() == r.info["strict_issues"]
    assert (strict_only.flag <= r.flag).all()
    # the reliability gate: below min_accuracy the scores stay and the flags are withheld
    gated = run_detector("confident", sim.dataset, ctx, {"epochs": EPOCHS, "min_accuracy": 0.999})
    assert gated.info["withheld"] is True and gated.flag.sum() == 0 and np.array_equal(gated.score, r.score)
    assert "withheld" in gated.info["finding"]


def test_abl_mixture_cut_on_planted_losses():
    """The per-class mixture cut isolates a class's low-loss cluster, and only where the
    cluster is separate and not most of the class."""
    from cleansers.abl import isolation_evidence, low_loss_clusters

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 200)
    losses = np.exp(rng.normal(0.0, 0.4, 800))  # every class: one cluster around loss 1
    poisoned = np.zeros(800, dtype=bool)
    poisoned[:60] = True  # 60 rows of class 0 fitted far better (loss ~1e-3)
    losses[:60] = np.exp(rng.normal(np.log(1e-3), 0.4, 60))
    losses[200:400] = np.exp(rng.normal(np.log(1e-3), 0.4, 200))  # class 1 is all easy: no cluster
    flag, info = low_loss_clusters(losses, labels, 4, min_separation=2.0, max_share=0.8)
    assert info["0"]["isolated"] and not info["1"]["isolated"] and not info["2"]["isolated"], info
    assert np.array_equal(flag, poisoned)
    ev = isolation_evidence(flag, labels, 4)
    assert [e["strength"] for e in ev] == ["weak", "none", "none", "none"]


def test_abl_loss_ranks_the_poisoned_rows_and_its_ratio_cut_takes_its_share(badnets):
    sim, ctx, cache = badnets
    r = _run("abl", sim, ctx, cache, lr=0.01, augment=False)
    poisoned = sim.truth["is_poisoned"].to_numpy()
    # at ABL's default lr 0.01, measured AUROC 0.731-0.942 (seeds 0-4 x 1/2 threads, pillow 13,
    # 2026-12-05). The authors' lr 0.1 ranged 0.533-0.998 over the same runs (0.642 at this
    # seed on one thread), too unstable to assert. The mixture cut on these easy digits
    # isolated a low-loss cluster in 6-10 classes (precision 0-0.26): ABL is not a default
    # detector, and its weak class evidence needs its share to stand out
    assert auroc(poisoned, r.score) >= 0.65
    assert r.info["cut"] == "mixture"
    ratio = run_detector("abl", sim.dataset, ctx, {"epochs": EPOCHS, "lr": 0.01, "augment": False, "cut": "ratio",
                                                   "isolation_ratio": 0.05})
    assert ratio.flag.sum() == round(0.05 * len(poisoned))


# ----------------------------------------------------------------------------- the default audit


def test_the_default_audit_names_the_target_and_flags_its_poisoned_rows(badnets):
    sim, ctx, cache = badnets
    results = [_run(n, sim, ctx, cache) for n in DEFAULT_DETECTORS]
    frame, verdict = fuse_and_decide(sim.dataset, results)
    poisoned = sim.truth["is_poisoned"].to_numpy()
    assert verdict.backdoor_classes == ["0"] and verdict.status == "dirt_found", verdict.findings
    m = detection_metrics(poisoned, frame["is_backdoor"].to_numpy())
    # measured over 5 seeds x 1/2 threads: TPR 0.99-1.0, FPR 0-0.001
    assert m["tpr"] >= 0.9 and m["fpr"] <= 0.01, m
    assert verdict.headline.startswith("Likely backdoor:")


@pytest.fixture(scope="module")
def clean_audit(digits):
    ctx = AuditContext(device="cpu", seed=0)
    return [run_detector(n, digits, ctx, {"epochs": EPOCHS}) for n in DEFAULT_DETECTORS]


def test_the_default_audit_calls_clean_digits_clean(digits, clean_audit):
    frame, verdict = fuse_and_decide(digits, clean_audit)
    # measured over 5 seeds x 1/2 threads: 0-0.3% of rows flagged, no class named
    assert verdict.backdoor_classes == [] and frame["flagged"].mean() <= 0.01, verdict.findings
    assert verdict.status == "clean" and verdict.headline.startswith("No dirt found")
    agpd = next(r for r in clean_audit if r.name == "agpd")
    assert not [e for e in agpd.info["class_evidence"] if e["strength"] == "strong"]


def test_agpd_and_sentinet_with_every_gpu_switch_forced_agree_with_fp32(badnets):
    """The detectors' own passes under bf16 autocast + channels_last + torch.compile (AGPD's
    gradient pass keeps compile off: trainers.accel.Never), on the same detection model as
    the fp32 eager run: the logits, AGPD's activation gradients and SentiNet's occlusion probes
    all run forced; the model comes from the fp32 run's cache (the trainer's forced run is
    tests/test_accel.py)."""
    from scipy.stats import spearmanr

    from trainers.accel import force

    sim, ctx, cache = badnets
    poisoned = sim.truth["is_poisoned"].to_numpy()
    fp = {n: _run(n, sim, ctx, cache) for n in ("agpd", "sentinet")}
    forced_ctx = AuditContext(device="cpu", seed=0, expected_dirty_rate=0.1,
                              model_cache={k: v for k, v in ctx.model_cache.items() if k[0] == "model" and len(k) == 4})
    with force("amp", "channels_last", "compile", "fused"):
        fo = {n: run_detector(n, sim.dataset, forced_ctx, {"epochs": EPOCHS}) for n in ("agpd", "sentinet")}
    assert all(r.info["model"]["trained_now"] is False for r in fo.values())  # the same model

    a, b = fp["agpd"], fo["agpd"]
    z_a, z_b = np.array(a.info["z_best_layer"]), np.array(b.info["z_best_layer"])
    rho = spearmanr(a.score, b.score).correlation
    auc_a, auc_b = auroc(poisoned, a.score), auroc(poisoned, b.score)
    print(f"agpd: z argmax {z_a.argmax()} / {z_b.argmax()}, score rank correlation {rho:.3f}, "
          f"AUROC {auc_a:.3f} / {auc_b:.3f}")
    # the class AGPD ranks first (with the small CNN not always the target: its evidence is weak
    # at this scale, see test_detection_model_is_trained_once_and_shared)
    assert z_b.argmax() == z_a.argmax()
    # measured (ctx seeds 0-2 x 1/2 threads): the same first class 6/6, rank correlation
    # 0.889-0.992, AUROC difference <= 0.067
    assert rho > 0.8 and abs(auc_a - auc_b) < 0.12, (rho, auc_a, auc_b)

    s, t = fp["sentinet"], fo["sentinet"]
    jaccard = (s.flag & t.flag).sum() / max(1, (s.flag | t.flag).sum())
    rho = spearmanr(s.score, t.score).correlation
    strong = [e["class"] for e in t.info["class_evidence"] if e["strength"] == "strong"]
    print(f"sentinet: flags {s.flag.sum()} / {t.flag.sum()}, Jaccard {jaccard:.3f}, rank correlation {rho:.3f}")
    # measured: flags' Jaccard 0.989-1.0, rank correlation 0.72-0.98, TPR 0.994-1.0
    assert strong == [0] and jaccard > 0.9, (strong, jaccard)
    assert detection_metrics(poisoned, t.flag, t.score)["tpr"] >= 0.9
