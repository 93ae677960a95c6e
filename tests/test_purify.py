"""Post-training purification on a real backdoored model: the small CNN trained on
scikit-learn's digits (32x32 RGB) with BadNets (3x3 white patch, 10% of rows relabelled to
class 0). Measured here: 8 epochs give CA ~0.97 and ASR ~0.90 on 300 held-out digits; plain
fine-tuning for 10 epochs leaves ASR ~0.9, so the bounds below separate a working method
from one that does nothing. Every method runs with short schedules (the defaults are the
published GPU ones)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

N_TEST, N_CLEAN = 300, 200
TRAIN_EPOCHS = 8
WIDTH = 12  # a narrower small CNN (channels 12-24-48-96): the tests share 2 CPU cores


@pytest.fixture(scope="module")
def digits_setup(tmp_path_factory):
    from pipelines.embedded import load_digits_rgb
    from pipelines.simulate import SimulationSpec, simulate
    from trainers import build_model, evaluate, fit, preset, save_model

    # one thread: these models and batches are tiny, and on 2 shared cores a second thread
    # mostly spins (the whole file took 640 s of user CPU with 2 threads, NC alone 433 s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = load_digits_rgb()
    perm = np.random.default_rng(0).permutation(len(ds))
    test, clean = ds.subset(perm[:N_TEST]), ds.subset(perm[N_TEST:N_TEST + N_CLEAN])
    train = ds.subset(perm[N_TEST + N_CLEAN:])
    sim = simulate(train, SimulationSpec(attack="badnets", poison_rate=0.1, seed=0))
    model = build_model("small_cnn", 10, (32, 32), seed=0, width=WIDTH)
    fit(model, sim.dataset.images, sim.dataset.labels, preset("cpu_small", epochs=TRAIN_EPOCHS, device="cpu"))
    base = evaluate(model, test, sim.trigger)
    assert base["asr"] > 0.8 and base["clean_acc"] > 0.9, base  # a clear backdoor to remove
    out = tmp_path_factory.mktemp("purify")
    model_dir = save_model(model, out / "backdoored", arch="small_cnn", num_classes=10, class_names=ds.class_names,
                           input_size=(32, 32), mean=model.norm.mean.flatten().tolist(),
                           std=model.norm.std.flatten().tolist(), arch_kwargs={"width": WIDTH})
    yield {"model": model, "model_dir": model_dir, "test": test, "clean": clean, "train": train,
           "trained_on": sim.dataset.images, "trigger": sim.trigger, "base": base, "tmp": out}
    torch.set_num_threads(threads)


# short CPU schedules, and the ASR each must get below (the backdoored model: ~0.9). The
# figures differ by CPU: the same seeds give other models with AVX-512 kernels than with
# AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 runs the AVX2 ones on an AVX-512
# machine); where both were measured, both are given, and the bound holds for both
CASES = {
    # FP at 12 epochs: ASR 0.91 -> 0.73 (AVX-512), 0.93 -> 0.38 (AVX2); 6 epochs left 0.84 on
    # AVX-512. Fine-pruning this small model does not remove the backdoor reliably: the test
    # asks for a clear drop (RELATIVE_DROP), the quality figure lives in benchmarks
    "fp": ({"epochs": 12}, 1.0),
    "ftsam": ({"epochs": 8}, 0.7),
    # SAU and NPD are aimed at the backdoor's class (``target`` 0: what the CPU profile's
    # "estimate" resolves from an audit or the residual estimate). Unaimed (the authors'
    # shared attack; NPD's per-row most likely wrong class), they depended on the machine's
    # model: on AVX-512 SAU 10 epochs at 3e-4 gave ASR 0.0 and NPD 0.15-0.42 (model seeds
    # 0-3), on an AVX2 EPYC (2026-12-06, model seeds 0-2, one thread) SAU 0.39-0.60 and NPD
    # 0.61-0.81. Aimed, AVX2, model seeds 0-2 at one thread and 0, 3 at two:
    # SAU 5 epochs at 3e-4: ASR 0.00-0.11, CA drop 0.13-0.23 (10 epochs: ASR 0.00, CA drop
    # up to 0.31, too near its allowance); NPD: ASR 0.03-0.22, CA within 0.03
    "sau": ({"epochs": 5, "lr": 3e-4, "target": 0}, 0.3),
    # NPD: 2 steps an epoch at batch 128 barely moved the polarizer (0.75). Since the
    # polarizer's BN stays in eval mode in the adversarial epochs (as the authors' code), lr
    # 0.05 wrecks CA (0.17); the published lr 0.01, batch 25, 10 epochs
    "npd": ({"warmup_epochs": 0, "epochs": 10, "batch_size": 25, "target": 0}, 0.55),
    # TSBD: unlearning at lr 1e-3 reaches <= 10% in 38 epochs; with the default sweep the CA
    # rule picks n = 5% on this one-thread model (ASR 0.81), so the sweep is fixed at 30%.
    # 12 fine-tuning epochs: since the second (perturbed-weight) pass no longer updates BN's
    # running statistics, 6 epochs (12 steps) left them stale after the zeroing (CA 0.31);
    # 12 epochs measured ASR 0.08, CA 0.87
    "tsbd": ({"unlearn_lr": 1e-3, "unlearn_max_epochs": 60, "epochs": 12, "sweep": [0.3]}, 0.3),
    # 48 steps of 50 rows, 3 inner perturbation steps, mask lr 0.03 (Adam, the default), the
    # perturbation's L1 budget 100 (the authors' GTSRB value; the default 300 cost one
    # model seed 14 points of CA here). Measured with the authors' additive perturbation over
    # model seeds 0-2: ASR 0.85-0.96 -> 0.05-0.14, CA -1 to -4 points (the old NC-style mask
    # trigger: 0.93 -> 0.57)
    "awm": ({"steps": 48, "batch_size": 50, "inner_steps": 3, "lr": 0.03, "trigger_norm": 100}, 0.5),
}


# clean-accuracy drop allowed (default 0.15); SAU (see its note above): up to 0.23 aimed on
# AVX2 (unaimed 0.92 -> 0.63 on AVX-512)
# NPD unaimed over model seeds 0-3 (one thread, AVX-512, pillow 13): CA drop 0.16, -0.01,
# 0.04, 0.03; aimed on AVX2: within 0.03
CA_ALLOWANCE = {"sau": 0.35, "npd": 0.25}
RELATIVE_DROP = {"fp": 0.1}  # ASR must fall at least this much below the backdoored model's


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_lowers_asr_and_saves_a_loadable_model(digits_setup, method):
    from trainers import evaluate, load_model
    from trainers.purify.run import purify_and_save

    options, asr_bound = CASES[method]
    out = digits_setup["tmp"] / method
    # holdout 0: the schedules above were measured on all 200 clean rows (the held-out
    # clean-accuracy check has its own test below); the published profile under them, as
    # measured (the CPU profile would add SAU's batch of 128 to its 10 epochs)
    metrics = purify_and_save(clean=digits_setup["clean"], method=method, out=out,
                              model_dir=digits_setup["model_dir"], test=digits_setup["test"],
                              trigger=digits_setup["trigger"], options=options, device="cpu", log=None,
                              holdout=0.0, residual=False, profile="published")
    assert metrics["profile"] == "published"
    assert metrics["before"]["asr"] > 0.8
    assert metrics["asr"] < asr_bound, metrics
    assert metrics["asr"] < metrics["before"]["asr"] - RELATIVE_DROP.get(method, 0.0), metrics
    assert metrics["clean_acc"] > digits_setup["base"]["clean_acc"] - CA_ALLOWANCE.get(method, 0.15), metrics
    loaded = load_model(out)
    again = evaluate(loaded, digits_setup["test"], digits_setup["trigger"])
    assert abs(again["clean_acc"] - metrics["clean_acc"]) < 0.01 and abs(again["asr"] - metrics["asr"]) < 0.01
    config = json.loads((out / "config.json").read_text())
    if method == "npd":
        assert config["modifications"][0]["name"] == "insert_polarizer"


@pytest.fixture(scope="module")
def clean_digits_model(digits_setup):
    """The same small CNN trained on the same rows without the poison (seed 1)."""
    from trainers import build_model, fit, preset

    model = build_model("small_cnn", 10, (32, 32), seed=1, width=WIDTH)
    train = digits_setup["train"]
    fit(model, train.images, train.labels, preset("cpu_small", epochs=TRAIN_EPOCHS, device="cpu"))
    return model


def test_nc_finds_target_zero_and_not_on_a_clean_model(digits_setup, clean_digits_model):
    from trainers.purify import purify

    # 150 Adam steps per class (30 epochs of 50 rows in batches of 10). Measured over model seeds
    # 0-3 (one thread, AVX-512): class 0's reversed mask L1 2.5-9.6 against >= 29 for every other
    # class (smallest / next 0.06-0.17); clean models (seeds 1-4) 0.67-0.94. The published MAD
    # rule (anomaly index > 2) is no test at this scale: it flagged 2 of the 4 clean models
    # (index 2.9, 3.4) and missed 2 of the 4 backdoored ones (1.7, 1.8), so the test asks for
    # the mechanism (one mask far smaller than the rest) and the clean model's lack of it.
    # With 12 steps no reversal reached the success threshold and the norms meant nothing.
    opts = {"reverse_epochs": 30, "reverse_rows": 50, "reverse_batch_size": 10, "epochs": 6}
    _, info = purify("nc", _copy(digits_setup["model"]), digits_setup["clean"], dict(opts), device="cpu")
    l1 = np.asarray(info["mask_l1"])
    assert int(np.argmin(l1)) == 0 and info["smallest_to_next_l1"] < 0.3, info
    assert info["target_class"] in (0, None), info  # never another class
    _, clean_info = purify("nc", _copy(clean_digits_model), digits_setup["clean"], dict(opts), device="cpu")
    assert clean_info["smallest_to_next_l1"] > 0.45, clean_info
    assert clean_info["smallest_to_next_l1"] > 2 * info["smallest_to_next_l1"], (clean_info, info)


def test_residual_estimate_reads_the_backdoor_before_and_after_and_auto_stops_on_it(digits_setup):
    """The trigger-free estimate names class 0 on the backdoored model; --method auto tries NC
    first (the evidence says a patch-like backdoor is there), keeps it when the evidence is
    gone, and the true ASR (with the trigger the estimate never saw) agrees. A sequence that
    cannot remove the backdoor (2 epochs of plain fine-tuning) ends with the warning."""
    from trainers.purify.residual import ResidualConfig
    from trainers.purify.run import purify_and_save

    # 40 rows, 120 steps of 10 per class: the NC test's schedule, a little shorter. Measured over
    # model seeds 0-3 and 1 / 2 threads: evidence before at 0.05-0.16 (smallest mask / next),
    # NC kept at 0.55-0.99 after with true ASR 0.02-0.09; 2 epochs of fine-tuning left
    # 0.05-0.19 and ASR 0.86-0.91. NC's held-out CA drop reached 0.10 (2 of 20 rows) once, at
    # the default max_ca_drop: the 20 held-out rows count in steps of 5 points, hence 0.25 here
    rc = ResidualConfig(rows=40, steps_per_class=120, batch_size=10)
    nc = {"nc.reverse_epochs": 30, "nc.reverse_rows": 50, "nc.reverse_batch_size": 10, "nc.epochs": 6}
    out = digits_setup["tmp"] / "auto"
    m = purify_and_save(clean=digits_setup["clean"], method="auto", out=out, model_dir=digits_setup["model_dir"],
                        test=digits_setup["test"], trigger=digits_setup["trigger"], options=nc, device="cpu",
                        log=None, residual=rc, max_ca_drop=0.25)
    r, p = m["residual"], m["purification"]
    assert r["before"]["evidence"] and r["before"]["class"] == 0, r["before"]
    assert p["steps"][0]["method"] == "nc", p["steps"]
    assert p["passed"] and not r["after"]["evidence"] and not r["warning"], (p["steps"], r["after"])
    # the decision after is the input model's reversed trigger, stamped on the purified model
    assert r["after"]["transfer_decides"] and r["after"]["transfer_rate"] < 0.2, r["after"]
    # ... so the fresh reversal on the purified model, which could not change it, was skipped
    assert r["after"]["fresh_reversal"] is False and r["after"]["reversal_evidence"] is None, r["after"]
    assert r["before"]["fresh_reversal"] is True and r["before"]["smallest_mask_l1"] > 0, r["before"]
    assert "_trigger" not in r["before"] and "_trigger" not in r["after"]  # no tensors in metrics.json
    assert m["before"]["asr"] > 0.8 and m["asr"] < 0.2, m  # the true ASR agrees with "no evidence"
    report = (out / "report.md").read_text()
    assert "Backdoor evidence before: class 0" in report and f"Auto: kept **{p['chosen']}**" in report
    assert "| not run |" in report  # the skipped reversal's column says so

    # asked for, the fresh reversal runs after purification too (recorded; the transfer decides)
    rc_full = ResidualConfig(rows=40, steps_per_class=120, batch_size=10, fresh_reversal_after=True)
    stays = purify_and_save(clean=digits_setup["clean"], method="auto", out=None,
                            model_dir=digits_setup["model_dir"], test=digits_setup["test"],
                            trigger=digits_setup["trigger"], options={"sequence": "ft", "ft.epochs": 2},
                            device="cpu", log=None, residual=rc_full)
    assert stays["residual"]["after"]["fresh_reversal"] is True, stays["residual"]["after"]
    assert isinstance(stays["residual"]["after"]["reversal_evidence"], bool), stays["residual"]["after"]
    assert stays["asr"] > 0.5 and not stays["purification"]["passed"], stays["purification"]["steps"]
    assert stays["residual"]["still_backdoored"] and "still backdoored" in stays["residual"]["warning"]
    assert stays["residual"]["after"]["transfer_rate"] >= 0.5, stays["residual"]["after"]
    assert "trigger reversed from the input model" in stays["residual"]["warning"]


def test_residual_estimate_marks_a_mask_found_only_after_purification(digits_setup, clean_digits_model):
    """When the input model showed no patch-like trigger, a small reversed mask on the model
    after purification is still evidence, marked ``mask_only_after``, and the warning says what
    else it may be: the purified model's fragility (a clean CIFAR-10 net after TSBD read 0.33 of
    the median) or a backdoor the input model hid and purification strengthened (digits SIG
    after SAU). Here the reference is a real estimate of a clean model and the model read after
    it is the backdoored one, whose class-0 mask the reversal finds.

    The cut is 0.2 of the median here (0.4 by default): measured with this schedule (AVX2, model
    seeds 0-3, 1 and 2 threads), the backdoored models read 0.04-0.10 and the clean ones (seeds
    1-4) 0.35-0.75; at this scale a clean digits model can cross 0.4 (0.38, 0.35), which is not
    what this test is about."""
    from trainers.purify.residual import ResidualConfig, describe, residual_estimate
    from trainers.purify.run import residual_summary

    rc = ResidualConfig(rows=40, steps_per_class=120, batch_size=10, threshold=0.2)
    clean, model = digits_setup["clean"], digits_setup["model"]
    before = residual_estimate(clean_digits_model, clean, rc, device="cpu", seed=0)
    assert not before["evidence"] and not before["mask_only_after"], describe(before)
    after = residual_estimate(model, clean, rc, device="cpu", seed=0, reference=before)
    assert not after["transfer_decides"], after  # the reference showed no evidence: its trigger does not decide
    assert after["evidence"] and after["class"] == 0 and after["mask_only_after"], describe(after)
    assert "appeared only after purification" in describe(after)
    summary = residual_summary(before, after)
    assert summary["still_backdoored"], summary
    assert "did not show" in summary["warning"] and "strengthened" in summary["warning"], summary["warning"]


def test_auto_runs_its_class_aimed_steps_only_when_a_class_is_known(digits_setup, clean_digits_model):
    """Auto's default sequence is nc, npd, tsbd, ftsam, sau; NPD (``class_aimed``) runs only
    when the audit named a class or the residual estimate of the input model shows one. On a
    model whose estimate shows nothing and without an audit both NC and NPD are skipped, and
    the skips are recorded with their reasons; with an audit naming a class NPD runs aimed at
    it; a sequence left with nothing to run is a one-line error giving each reason."""
    from pipelines.errors import VetsetError
    from trainers.purify.residual import ResidualConfig, residual_estimate
    from trainers.purify.run import AutoConfig, auto_config, purify_auto

    assert AutoConfig().sequence == ("nc", "npd", "tsbd", "ftsam", "sau") and AutoConfig().class_aimed == ("npd",)
    assert auto_config({"class_aimed": ""}).class_aimed == ()
    with pytest.raises(VetsetError, match="unknown purification method 'magic'"):
        auto_config({"class_aimed": "magic"})
    with pytest.raises(VetsetError, match="tsbd cannot be class-aimed"):
        auto_config({"class_aimed": "tsbd"})
    assert auto_config({"class_aimed": "npd,sau"}).class_aimed == ("npd", "sau")
    rc = ResidualConfig(rows=40, steps_per_class=120, batch_size=10)
    clean, names = digits_setup["clean"], digits_setup["clean"].class_names
    before = residual_estimate(clean_digits_model, clean, rc, device="cpu", seed=0)
    assert not before["evidence"], before
    cfg = auto_config({"sequence": "nc,npd,ft", "ft.epochs": 1, "npd.warmup_steps": 0, "npd.steps": 2,
                       "npd.batch_size": 25})
    kw = dict(check=None, res_before=before, res_cfg=rc, max_ca_drop=1.0, device="cpu", seed=0, log=None,
              profile="cpu")
    _, info = purify_auto(_copy(clean_digits_model), clean, cfg, **kw)
    assert [s["method"] for s in info["steps"]] == ["ft"], info["steps"]
    assert [s["method"] for s in info["skipped"]] == ["nc", "npd"], info["skipped"]
    assert "no class to aim at" in info["skipped"][1]["why"] and "patch-like" in info["skipped"][0]["why"]
    # the reports say which steps were skipped and why
    from pipelines.run_report import render_purify_report
    from trainers.purify.run import report_markdown
    metrics = {"method": "auto", "source": "m", "arch": "small_cnn", "n_clean": len(clean), "seconds": 1.0,
               "purification": {**info, "residual_after": None}}
    assert f"npd skipped: {info['skipped'][1]['why']}" in report_markdown(metrics)
    out = digits_setup["tmp"] / "auto-skips"
    out.mkdir(exist_ok=True)
    assert "npd skipped: no class to aim at" in render_purify_report(metrics, out).read_text()
    _, info = purify_auto(_copy(clean_digits_model), clean, cfg, audit=(3, f"the audit's class ({names[3]})"), **kw)
    assert [s["method"] for s in info["steps"]][:1] == ["npd"], info["steps"]
    assert "the audit's class" in info["steps"][0]["target_source"], info["steps"][0]
    if info["chosen"] == "npd":
        assert info["chosen_config"]["target"] == 3, info["chosen_config"]
    # the published profile aims NPD per row; as auto's step it is aimed there too
    _, info = purify_auto(_copy(clean_digits_model), clean, cfg, audit=(3, f"the audit's class ({names[3]})"),
                          **{**kw, "profile": "published"})
    assert [s["method"] for s in info["steps"]][:1] == ["npd"], info["steps"]
    assert "the audit's class" in info["steps"][0]["target_source"], info["steps"][0]
    with pytest.raises(VetsetError, match="no method left to try.*nc: .*npd: no class to aim at"):
        purify_auto(_copy(clean_digits_model), clean, auto_config({"sequence": "nc,npd"}), **kw)


def test_npd_on_the_cpu_profile_aims_at_the_class_the_residual_estimate_names(digits_setup):
    """NPD's CPU profile takes ``target="estimate"``: the residual estimate of the input model
    (run before purifying anyway) names the BadNets target here (class 0, as in the auto test
    above), and every row's attack is aimed at it; metrics record where the target came from.
    SAU's CPU profile aims its shared attack at the same class. Without the estimate
    (``residual=False``) the attack goes back to each row's most likely wrong class, and
    says why."""
    from trainers.purify.residual import ResidualConfig
    from trainers.purify.base import make_config
    from trainers.purify.run import audit_target, purify_and_save, report_markdown, resolve_estimated_target

    rc = ResidualConfig(rows=40, steps_per_class=120, batch_size=10)
    opts = {"warmup_steps": 0, "steps": 40, "batch_size": 25}
    m = purify_and_save(clean=digits_setup["clean"], method="npd", out=None, model_dir=digits_setup["model_dir"],
                        test=digits_setup["test"], trigger=digits_setup["trigger"], options=opts, device="cpu",
                        log=None, residual=rc, profile="cpu", max_ca_drop=0.25)
    p = m["purification"]
    assert m["residual"]["before"]["evidence"] and m["residual"]["before"]["class"] == 0, m["residual"]["before"]
    assert p["config"]["target"] == 0 and p["attack_target"] == digits_setup["clean"].class_names[0], p
    assert "the residual estimate of the input model names" in p["target_source"], p["target_source"]
    assert f"- npd: {p['target_source']}" in report_markdown(m)
    from pipelines.run_report import render_purify_report

    html_text = render_purify_report(m, digits_setup["tmp"]).read_text()
    assert "the attack&#x27;s target" in html_text and "the residual estimate of the input model names" in html_text
    print(f"npd (target from the estimate, 40 steps): ASR {m['before']['asr']:.3f} -> {m['asr']:.3f}, "
          f"CA {m['before']['clean_acc']:.3f} -> {m['clean_acc']:.3f}")
    assert m["asr"] < 0.5 * m["before"]["asr"], (m["before"], m["asr"])
    # SAU's CPU profile aims its shared attack the same way (a few steps: where it aims)
    s = purify_and_save(clean=digits_setup["clean"], method="sau", out=None, model_dir=digits_setup["model_dir"],
                        options={"steps": 4, "batch_size": 25}, device="cpu", log=None, residual=rc, profile="cpu",
                        max_ca_drop=1.0)["purification"]
    assert s["config"]["target"] == 0 and s["attack_target"] == digits_setup["clean"].class_names[0], s
    assert "the residual estimate of the input model names" in s["target_source"], s["target_source"]
    off = purify_and_save(clean=digits_setup["clean"], method="npd", out=None, model_dir=digits_setup["model_dir"],
                          options={**opts, "steps": 1}, device="cpu", log=None, residual=False, profile="cpu",
                          max_ca_drop=1.0)
    assert off["purification"]["config"]["target"] is None, off["purification"]["config"]
    assert "not aimed at one class" in off["purification"]["target_source"]
    assert off["purification"]["attack_target"] == "each row's most likely wrong class"
    assert "not run" in off["purification"]["target_source"]
    # an audit of the training data that named one class comes first (here a class other than
    # the estimate's, to tell them apart); a verdict that is missing or names a class the model
    # does not have is a one-line error before any work
    from pipelines.errors import VetsetError
    from pipelines.verdict import AuditVerdict, write_verdict

    names = digits_setup["clean"].class_names
    run = digits_setup["tmp"] / "audit-run"
    run.mkdir(exist_ok=True)

    def verdict(classes):
        write_verdict(AuditVerdict(status="dirt_found" if classes else "clean", headline="", confidence="high",
                                   rows=100, flagged=0, suspected_poisoned=0, suspected_mislabelled=0, unreadable=0,
                                   backdoor_classes=classes), run / "verdict.json")

    verdict([names[3]])
    named = purify_and_save(clean=digits_setup["clean"], method="npd", out=None, model_dir=digits_setup["model_dir"],
                            options={**opts, "steps": 1}, device="cpu", log=None, residual=False, profile="cpu",
                            max_ca_drop=1.0, audit=run)
    assert named["purification"]["config"]["target"] == 3, named["purification"]["config"]
    assert named["audit"] == str(run)
    assert f"the audit named as holding injected rows ({names[3]})" in named["purification"]["target_source"]
    verdict([])
    assert "the audit named no class" in resolve_estimated_target(make_config("npd", {}, "cpu"), None,
                                                                  audit_target(run, names))[1]
    verdict(["zebra"])
    with pytest.raises(VetsetError, match="named class\\(es\\) zebra, which the clean set does not have"):
        purify_and_save(clean=digits_setup["clean"], method="npd", out=None, model_dir=digits_setup["model_dir"],
                        options=opts, device="cpu", log=None, residual=False, profile="cpu", audit=run)
    with pytest.raises(VetsetError, match="no such verdict file"):
        audit_target(digits_setup["tmp"] / "no-audit-here", names)
    # the published profile keeps the authors' per-row target; a class the user gives is kept
    for cfg in (make_config("npd", {}), make_config("npd", {"target": 3}, "cpu")):
        assert resolve_estimated_target(cfg, {"evidence": True, "class": 0}) == (cfg, None)
    none_found = resolve_estimated_target(make_config("npd", {}, "cpu"), {"evidence": False, "class": None})
    assert none_found[0].target is None and "no patch-like backdoor found" in none_found[1]


def test_auto_options_are_checked_before_any_work(digits_setup):
    from pipelines.errors import VetsetError
    from trainers.purify.run import auto_config, purify_and_save

    assert auto_config({"sequence": "npd,sau", "npd.epochs": 3}).options == {"npd": {"epochs": 3}}
    for bad, msg in [({"sequence": "npd,magic"}, "unknown purification method 'magic'"),
                     ({"sequence": "strip"}, "cannot be a step"),
                     ({"epochs": 3}, "is not METHOD.OPTION"),
                     ({"sau.epochz": 3}, "sau has no option"),
                     ({"sequence": []}, "wants a list")]:
        with pytest.raises(VetsetError, match=msg):
            auto_config(bad)
    with pytest.raises(VetsetError, match="cannot run without it"):
        purify_and_save(clean=digits_setup["clean"], method="auto", out=None, model_dir=digits_setup["model_dir"],
                        residual=False, log=None)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_strip_calibrates_frr_and_rejects_triggered_inputs(digits_setup):
    from trainers import load_model
    from trainers.purify import StripWrapper
    from trainers.purify.run import purify_and_save, strip_rates

    out = digits_setup["tmp"] / "strip"
    metrics = purify_and_save(clean=digits_setup["clean"], method="strip", out=out, model_dir=digits_setup["model_dir"],
                              test=digits_setup["test"], trigger=digits_setup["trigger"], device="cpu", log=None,
                              residual=False)
    assert metrics["strip_frr"] <= 0.05  # calibrated at 1% on 168 clean rows, measured on 300 others
    # measured 0.07 (0.0 of triggered rows' mean entropy reaches the clean 1% quantile's
    # neighbourhood); the linear 50/50 blend this once used accepted all of them (1.0)
    assert metrics["strip_far"] < 0.15, metrics  # most triggered inputs are rejected
    loaded = load_model(out)
    assert isinstance(loaded, StripWrapper)
    x = torch.from_numpy(digits_setup["test"].images[:8]).permute(0, 3, 1, 2).float() / 255
    logits, reject = loaded.predict_with_reject(x)
    assert logits.shape == (8, 10) and reject.dtype == torch.bool
    assert torch.allclose(loaded(x), digits_setup["model"](x), atol=1e-5)
    assert strip_rates(loaded, digits_setup["test"], digits_setup["trigger"])["strip_far"] == metrics["strip_far"]


def _parquet(ds, path):
    from conftest import png_bytes

    table = pa.table({"image": [{"bytes": png_bytes(im), "path": None} for im in ds.images],
                      "label": pa.array(ds.labels, pa.int64())})
    pq.write_table(table, path)
    return path


def test_purify_flow_writes_metrics_and_rejects_bad_input(prefect_harness, digits_setup, tmp_path, capsys):
    from flows.cli import run
    from trainers import load_model

    clean = _parquet(digits_setup["clean"], tmp_path / "clean.parquet")
    test = _parquet(digits_setup["test"], tmp_path / "test.parquet")
    trigger = tmp_path / "trigger.json"
    trigger.write_text(json.dumps(digits_setup["trigger"]))
    out = tmp_path / "ft"
    code = run(["purify", "--model", str(digits_setup["model_dir"]), "--clean", str(clean), "--method", "ft",
                "--set", "epochs=2", "--test", str(test), "--trigger", str(trigger), "--device", "cpu",
                "--residual-rows", "20", "--residual-steps", "20", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"clean_acc", "asr", "ra", "der", "before", "after", "residual"} <= set(metrics)
    assert metrics["profile"] == "cpu"  # --profile auto on a CPU device
    assert metrics["residual"]["after"]["rows"] == 20 and metrics["residual"]["after"]["steps_per_class"] == 20
    assert metrics["residual"]["summary"].startswith("backdoor evidence before: ")
    assert metrics["residual"]["summary"] in printed.out
    report = (out / "report.md").read_text()
    assert report.startswith("# vetset purify: ft") and "Backdoor evidence before: " in report
    load_model(out)

    # bad input: one line, exit 2, nothing written
    bad = tmp_path / "bad"
    sd = tmp_path / "sd.pt"
    torch.save(digits_setup["model"].state_dict(), sd)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(clean).slice(0, 0), empty)
    cases = [
        (["--model", str(tmp_path / "nope"), "--clean", str(clean), "--method", "ft"], "model directory not found"),
        (["--model", str(digits_setup["model_dir"]), "--clean", str(clean), "--method", "magic"],
         "unknown purification method 'magic'"),
        (["--arch", "preact_resnet18", "--state-dict", str(sd), "--clean", str(clean), "--method", "ft"],
         "does not fit preact_resnet18"),
        (["--model", str(digits_setup["model_dir"]), "--clean", str(empty), "--method", "ft"], ""),
        (["--model", str(digits_setup["model_dir"]), "--clean", str(clean), "--method", "npd",
          "--audit", str(tmp_path / "no-run")], "no such verdict file"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert run(["purify", *argv, "--out", str(bad)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("vetset: error:") and len(err.splitlines()) == 1 and message in err, err
        assert not bad.exists()


def test_a_one_class_or_thin_clean_set_is_refused_before_any_work(digits_setup):
    from pipelines.errors import VetsetError
    from trainers.purify.run import check_clean_set, purify_and_save

    clean = digits_setup["clean"]
    one = clean.subset(np.flatnonzero(clean.labels == 3))
    with pytest.raises(VetsetError, match="one class only"):
        purify_and_save(clean=one, method="ft", out=digits_setup["tmp"] / "one", model_dir=digits_setup["model_dir"],
                        log=None)
    assert not (digits_setup["tmp"] / "one").exists()
    some = clean.subset(np.flatnonzero(clean.labels < 6))
    with pytest.raises(VetsetError, match="lacks 4 of the model's 10 classes"):
        check_clean_set(some, 10)
    check_clean_set(some, 10, allow_missing_classes=True)
    thin = clean.subset(np.r_[np.flatnonzero(clean.labels != 7), np.flatnonzero(clean.labels == 7)[:2]])
    with pytest.raises(VetsetError, match="fewer than 5 readable rows for 7"):
        check_clean_set(thin, 10)


def test_a_purification_that_collapses_clean_accuracy_is_not_saved(digits_setup):
    """Gradient ascent on the clean set (``ft`` with a negative-free but huge learning rate
    stands in for a method gone wrong): the held-out clean rows show the collapse, nothing
    is saved, and --force saves it with the check recorded."""
    from pipelines.errors import VetsetError
    from trainers.purify.run import purify_and_save

    wreck = {"epochs": 3, "lr": 5.0}
    out = digits_setup["tmp"] / "wrecked"
    with pytest.raises(VetsetError, match="collapsed the model's clean accuracy"):
        purify_and_save(clean=digits_setup["clean"], method="ft", out=out, model_dir=digits_setup["model_dir"],
                        options=wreck, device="cpu", log=None, residual=False)
    assert not out.exists()
    metrics = purify_and_save(clean=digits_setup["clean"], method="ft", out=out, model_dir=digits_setup["model_dir"],
                              options=wreck, device="cpu", log=None, force=True,
                              residual=False)
    check = metrics["ca_check"]
    assert check["collapsed"] and check["forced"] and check["held_out_rows"] == 20 and check["drop"] > 0.1
    assert (out / "model.safetensors").exists()
    ok = purify_and_save(clean=digits_setup["clean"], method="ft", out=digits_setup["tmp"] / "fine",
                         model_dir=digits_setup["model_dir"], options={"epochs": 1}, device="cpu", log=None,
                         residual=False)
    assert not ok["ca_check"]["collapsed"]


def test_clean_rows_the_model_trained_on_are_known_and_not_read_as_a_drop(digits_setup):
    """A model saved with its training rows (as ``vetset train`` saves it): purify counts the
    clean rows it was trained on, holds out rows it never saw when there are enough, measures
    seen held-out rows from its accuracy on unseen rows (--test) when it must, warns when no
    such accuracy is known, and saves the purified model with the rows it has now seen."""
    from pipelines.dataset import ImageDataset, row_digests
    from pipelines.errors import VetsetError
    from trainers import save_model
    from trainers.purify.run import purify_and_save
    from trainers.saved import TRAINING_ROWS_FILE, read_training_rows

    model, tmp = digits_setup["model"], digits_setup["tmp"]
    trained_on = row_digests(digits_setup["trained_on"])
    model_dir = save_model(model, tmp / "with-rows", arch="small_cnn", num_classes=10,
                           class_names=digits_setup["clean"].class_names, input_size=(32, 32),
                           mean=model.norm.mean.flatten().tolist(), std=model.norm.std.flatten().tolist(),
                           arch_kwargs={"width": WIDTH}, training_rows=trained_on)
    assert np.array_equal(read_training_rows(model_dir), np.unique(trained_on))
    assert read_training_rows(digits_setup["model_dir"]) is None  # saved without: unknown, not "none seen"

    train, unseen = digits_setup["train"], digits_setup["clean"]
    seen_rows = np.flatnonzero(np.isin(row_digests(train.images), trained_on))  # not the poisoned rows
    a, b = train.subset(seen_rows[:100]), unseen.subset(np.arange(100))
    mixed = ImageDataset(images=np.concatenate([a.images, b.images]), labels=np.concatenate([a.labels, b.labels]),
                         class_names=list(a.class_names), sample_ids=np.concatenate([a.sample_ids, b.sample_ids]),
                         unreadable=np.concatenate([a.unreadable, b.unreadable]))
    out = tmp / "mixed-out"
    m = purify_and_save(clean=mixed, method="ft", out=out, model_dir=model_dir, options={"epochs": 1}, device="cpu",
                        log=None, residual=False)
    seen = m["clean_rows_seen"]
    assert seen["known"] and seen["seen"] == 100 and seen["clean_rows"] == 200
    assert seen["held_out_seen"] == 0 and m["ca_check"]["held_out_seen_in_training"] == 0
    assert m["ca_check"]["baseline"] == pytest.approx(m["ca_check"]["before"])  # all unseen: the paired rule
    kept = read_training_rows(out)  # the purified model has now also seen the 180 rows it was tuned on
    assert len(kept) == len(np.unique(trained_on)) + 100 - seen["held_out"]

    only_seen = train.subset(seen_rows[:200])
    m = purify_and_save(clean=only_seen, method="ft", out=None, model_dir=model_dir, options={"epochs": 1},
                        device="cpu", log=None, residual=False, test=digits_setup["test"])
    check = m["ca_check"]
    assert m["clean_rows_seen"]["held_out_seen"] == check["held_out_rows"] == check["held_out_seen_in_training"]
    assert check["reference"] == pytest.approx(m["before"]["clean_acc"]) and "--test" in check["reference_source"]
    assert check["baseline"] == pytest.approx(min(check["reference"], check["before"]))
    assert check["drop"] == pytest.approx(check["baseline"] - check["after"])
    m = purify_and_save(clean=only_seen, method="ft", out=None, model_dir=model_dir, options={"epochs": 1},
                        device="cpu", log=None, residual=False)
    assert m["ca_check"]["reference"] is None and m["clean_rows_seen"]["message"].startswith("WARNING")

    np.save(model_dir / TRAINING_ROWS_FILE, np.arange(3, dtype=np.int64))
    with pytest.raises(VetsetError, match="not the training-row list"):
        read_training_rows(model_dir)


def test_npd_with_every_gpu_switch_forced_matches_fp32_eager(digits_setup):
    """NPD (the polarizer inserted into a frozen net, a PGD attack per batch) under bf16
    autocast + channels_last + torch.compile of the loop's forward: it lowers the ASR as the
    fp32 eager run does, at a like clean accuracy."""
    from trainers import evaluate
    from trainers.accel import force
    from trainers.purify import purify

    options = CASES["npd"][0]
    runs = {}
    for mode, switched in (("fp32", ()), ("forced", ("amp", "channels_last", "compile", "fused"))):
        with force(*switched):
            model, _ = purify("npd", _copy(digits_setup["model"]), digits_setup["clean"], dict(options),
                              device="cpu", seed=0)
            runs[mode] = evaluate(model, digits_setup["test"], digits_setup["trigger"])
    fp, fo = runs["fp32"], runs["forced"]
    print(f"npd fp32: CA {fp['clean_acc']:.3f} ASR {fp['asr']:.3f}; forced: CA {fo['clean_acc']:.3f} ASR {fo['asr']:.3f}")
    # the forced run meets NPD's own bounds above; the fp32 runs' CA drop spread 0.17 over model
    # seeds (-0.01..0.16) and their ASR 0.13-0.49, so a difference inside that spread is not
    # the switches' doing (measured forced vs fp32 on seed 0: CA 0.887 vs 0.780, ASR 0.26 vs 0.32)
    assert fo["asr"] < CASES["npd"][1], fo
    assert fo["clean_acc"] > digits_setup["base"]["clean_acc"] - CA_ALLOWANCE["npd"], fo
    assert abs(fo["clean_acc"] - fp["clean_acc"]) < 0.2 and abs(fo["asr"] - fp["asr"]) < 0.3, (fp, fo)


def test_the_audits_injected_rows_measure_the_backdoor_without_the_trigger(prefect_harness, digits_setup, tmp_path,
                                                                          capsys):
    """``--audit`` with a dirty-label class: the rows the audit found injected into it, read
    back from the audited data, are the trigger on other classes' images, so the share a model
    calls the class is its attack success on its own training poison: near 1 before, and
    after purifying it tracks the test ASR measured with the trigger file (which the measure
    never reads). Data changed since the audit, or a class with no excess (clean-label),
    gives no number and a note."""
    from cleansers.audit import run_audit
    from cleansers.base import AuditContext
    from pipelines.loaders import load_dataset
    from pipelines.outputs import RunPaths
    from pipelines.run_report import render_purify_report
    from pipelines.simulate import SimulationSpec, simulate, write_simulation
    from pipelines.verdict import read_verdict, write_verdict
    from flows.cli import run
    from trainers.purify.run import purify_and_save, report_markdown

    sim = simulate(digits_setup["train"], SimulationSpec(attack="badnets", poison_rate=0.1, seed=0))
    assert np.array_equal(sim.dataset.images, digits_setup["trained_on"])  # the data the model was trained on
    data = write_simulation(sim, tmp_path / "dirty")["data"]
    run_dir = tmp_path / "audit"
    import time
    t0 = time.perf_counter()
    # the training-dynamics detector alone, 4 epochs: enough to name the class (its 1.7x size)
    # and pick its rows in the model's feature space, in a third of the default's time
    run_audit(load_dataset(data), ["dynamics"], RunPaths(run_dir), run_id="t", ctx=AuditContext(device="cpu", seed=0),
              options={"dynamics": {"epochs": 4}})
    assert read_verdict(run_dir / "verdict.json").backdoor_classes == [digits_setup["clean"].class_names[0]]
    kw = dict(clean=digits_setup["clean"], model_dir=digits_setup["model_dir"], test=digits_setup["test"],
              trigger=digits_setup["trigger"], device="cpu", log=None, residual=False, audit=run_dir, max_ca_drop=1.0)
    # as a user runs it: `vetset purify --audit` prints the share beside the residual estimate
    test, clean = _parquet(digits_setup["test"], tmp_path / "test.parquet"), _parquet(digits_setup["clean"],
                                                                                     tmp_path / "clean.parquet")
    (tmp_path / "trigger.json").write_text(json.dumps(digits_setup["trigger"]))
    code = run(["purify", "--model", str(digits_setup["model_dir"]), "--clean", str(clean), "--method", "ft",
                "--set", "epochs=2", "--test", str(test), "--trigger", str(tmp_path / "trigger.json"), "--device",
                "cpu", "--no-residual", "--max-ca-drop", "1", "--audit", str(run_dir), "--out", str(tmp_path / "ft")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    cli = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert cli["audit_rows"]["summary"] in printed.out and "WARNING: the purified model still puts" in printed.out
    # NPD at the published radius 3.0: the CPU profile's 6.0 turns even the memorised rows (the
    # share 1.00 -> 0.00, test ASR 0.004), which would leave no case of the share erring high
    npd3 = {"warmup_steps": 0, "steps": 40, "batch_size": 25, "radius": 3.0}
    for method, options in (("ft", {"epochs": 2}), ("npd", npd3)):
        m = cli if method == "ft" else purify_and_save(method=method, out=tmp_path / method, options=options,
                                                        profile="cpu", **kw)
        rows = m["audit_rows"]
        print(f"{method}: audit's rows called class 0 {rows['before']:.3f} -> {rows['after']:.3f}; "
              f"test ASR {m['before']['asr']:.3f} -> {m['asr']:.3f}")
        assert rows["rows"] >= 50 and rows["before"] > 0.9
        assert rows["evidence"] == (rows["after"] > rows["evidence_above"])
        assert rows["summary"][1:] in report_markdown(m)
        assert "audit-rows-summary" in (tmp_path / method / "report.html").read_text()
        if method == "ft":  # fine-tuning the whole net two epochs leaves the backdoor, and the rows say so
            assert m["asr"] > 0.5 and rows["evidence"] and abs(rows["after"] - m["asr"]) < 0.2, (rows, m["asr"])
    # NPD (the network frozen, a polarizer in front of its last block) took the test ASR down
    # but not the rows' share: this tiny net fitted its 1,300 training digits, and the frozen
    # weights still call the injected rows 0 without the trigger's help (memorised; measured
    # 1.00 -> 0.91 against a test ASR of 0.85 -> 0.17; on the CIFAR-10 residual net, which fits
    # far less, the two agree within 2.5 points after NPD, TSBD and fine-tuning alike,
    # docs/benchmarks.md): where a model memorised its training rows the share errs high
    assert m["asr"] < 0.5 and rows["after"] >= m["asr"], (rows, m["asr"])
    # --method auto with the audit: a step passes only when the share is at most 10%; none
    # does here (fine-tuning leaves the backdoor, NPD the memorised rows), so the last resort
    # keeps the step with the smallest share, and the share reported is that step's
    from trainers.purify.residual import ResidualConfig
    auto = purify_and_save(method="auto", out=None, profile="cpu",
                           options={"sequence": "ft,npd", "ft.epochs": 2, **{f"npd.{k}": v for k, v in npd3.items()}},
                           **{**kw, "residual": ResidualConfig(rows=40, steps_per_class=120, batch_size=10)})
    steps, rows = auto["purification"]["steps"], auto["audit_rows"]
    assert [s["method"] for s in steps] == ["ft", "npd"] and not auto["purification"]["passed"], steps
    for s in steps:
        assert s["passed"] == (not s["residual_evidence"] and s["audit_rows_share"] <= rows["evidence_above"]), s
    chosen = min(steps, key=lambda s: s["audit_rows_share"])
    assert auto["purification"]["chosen"] == chosen["method"], steps
    assert abs(rows["after"] - chosen["audit_rows_share"]) < 1e-3 and rows["evidence"] and rows["warning"], rows
    # a class with no excess over the median (a clean-label attack): no measure, a note
    original = (run_dir / "verdict.json").read_text()
    verdict = read_verdict(run_dir / "verdict.json")
    for cls in verdict.classes:
        for s in cls.signals:
            s.fired = s.fired and s.name != "class_size"
    write_verdict(verdict, run_dir / "verdict.json")
    m = purify_and_save(method="ft", out=None, options={"epochs": 1}, profile="cpu", **kw)
    assert "holds no rows above the median class" in m["audit_rows"]["note"]
    assert "holds no rows above the median class" in report_markdown(m)
    # the audited data changed since the audit: no measure, never a wrong one
    (run_dir / "verdict.json").write_text(original)
    write_simulation(simulate(digits_setup["train"], SimulationSpec(attack="badnets", poison_rate=0.1, seed=1)),
                     tmp_path / "dirty")
    m = purify_and_save(method="ft", out=None, options={"epochs": 1}, profile="cpu", **kw)
    assert "changed since the audit" in m["audit_rows"]["note"], m["audit_rows"]
