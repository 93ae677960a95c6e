"""The GPU-only switches and device handling (trainers/accel.py), run on the CPU.

bf16 autocast, channels_last and torch.compile (inductor, with the machine's C compiler) are
forced on with ``trainers.accel.force`` and their results held against the fp32 eager run of
the same code. The detectors' and purifiers' forced runs live beside their fp32 tests
(tests/test_detectors.py, test_defenses.py, test_purify.py) and reuse those models.

Tolerances were measured over model seeds 0-2 with 1 and 2 threads (the range beside each;
benchmarks/forced_switches.py).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipelines.errors import VetsetError
from trainers.accel import FORCE_ENV, Never, force, forced, resolve_device, switches, with_oom_retry

REPO = Path(__file__).resolve().parents[1]
ALL = ("amp", "channels_last", "compile", "fused")


# ----------------------------------------------------------------------------- device handling


def test_no_cuda_literal_outside_the_device_helper():
    """Only trainers/accel.py names CUDA: every other module asks it (is_cuda, resolve_device,
    switches...), so a CUDA-only path cannot hide in a module CI never sends to a GPU."""
    pattern = re.compile(r"""["']cuda|\.cuda\(|torch\.cuda\.""")
    offenders = []
    for pkg in ("pipelines", "cleansers", "trainers", "flows"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            if path == REPO / "trainers" / "accel.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code) and '"""' not in line:
                    offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_cuda_where_there_is_none_is_a_one_line_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(VetsetError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(VetsetError, match="CUDA is not available"):
        resolve_device("cuda:1")
    with pytest.raises(VetsetError, match="unknown device"):
        resolve_device("tpu9")
    assert resolve_device("auto").type == "cpu"


def test_cuda_visible_devices_empty_behaves_like_a_cpu_machine(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", "from trainers.accel import resolve_device, switches; "
                          "print(resolve_device('auto'), switches('auto').describe())"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cpu {'device': 'cpu', 'amp': False, 'channels_last': True, 'compile': False, "
                                 "'fused': False}")
    # the CLI: one line, non-zero exit, no traceback
    cli = subprocess.run([sys.executable, "-m", "flows", "train", "--data", "embedded:digits", "--out",
                          str(tmp_path / "m"), "--device", "cuda"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert cli.returncode != 0
    err = [line for line in cli.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1 and "CUDA is not available" in err[0] and "Traceback" not in cli.stderr, cli.stderr


def test_forcing_switches_and_never():
    assert forced() == frozenset() or os.environ.get(FORCE_ENV)
    with force(*ALL):
        sw = switches("cpu", amp=False, channels_last=False, compile=False, fused=False)
        assert (sw.amp, sw.channels_last, sw.compile, sw.fused) == (True, True, True, True)
        kept_off = switches("cpu", compile=Never("hooks"))
        assert kept_off.compile is False and kept_off.amp is True
        with force():  # an fp32 eager reference inside a forced block
            assert switches("cpu").describe() == {"device": "cpu", "amp": False, "channels_last": True,
                                                  "compile": False, "fused": False}
    assert switches("cpu").amp is False  # "auto": bf16 on CUDA only
    with pytest.raises(ValueError):
        with force("fp8"):
            pass


def test_vetset_force_environment_variable():
    code = ("from trainers.accel import switches; s = switches('cpu', amp=False); "
            "print(s.amp, s.channels_last, s.compile)")
    env = dict(os.environ, VETSET_FORCE="amp,compile")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr
    env["VETSET_FORCE"] = "amp,turbo"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "unknown switch" in out.stderr


# ----------------------------------------------------------------------------- out of memory


class OOMAbove(nn.Module):
    """Runs ``inner``, but raises the CUDA allocator's error for batches above ``limit`` rows
    (what a too-large batch does on a GPU)."""

    def __init__(self, inner: nn.Module, limit: int):
        super().__init__()
        self.inner, self.limit, self.calls = inner, limit, []

    def forward(self, x):
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} MiB")
        return self.inner(x)


def _digits(n=400):
    from pipelines.embedded import load_digits_rgb

    ds = load_digits_rgb(size=16)
    idx = np.random.default_rng(0).permutation(len(ds))[:n]
    return ds.images[idx], ds.labels[idx]


def test_with_oom_retry_halves_once_then_names_the_option():
    seen = []

    def run(bs):
        seen.append(bs)
        if bs > 100:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return bs

    assert with_oom_retry(run, 128, option="--batch-size") == 64 and seen == [128, 64]
    with pytest.raises(VetsetError, match=r"even at batch size 150 .*lower --batch-size"):
        with_oom_retry(run, 300, option="--batch-size")  # 300 -> 150: both too large
    with pytest.raises(ValueError):  # anything else is not retried
        with_oom_retry(lambda bs: (_ for _ in ()).throw(ValueError("bad")), 8, option="x")


def test_inference_and_training_retry_at_half_batch_after_running_out_of_memory():
    from trainers import build_model, fit, predict_logits, preset

    images, labels = _digits()
    inner = build_model("small_cnn", 10, (16, 16), seed=0)
    ref = predict_logits(inner, images, batch_size=256)
    model = OOMAbove(inner, limit=150)
    got = predict_logits(model, images, batch_size=256)  # 256 fails, 128 runs
    assert np.allclose(got, ref, atol=1e-5) and 256 in model.calls and max(c for c in model.calls if c <= 150) == 128

    # training: a batch of 64 that does not fit runs as two halves of 32 from then on
    cfg = preset("cpu_small", epochs=2, batch_size=64, device="cpu")
    model = OOMAbove(build_model("small_cnn", 10, (16, 16), seed=0), limit=40)
    with pytest.warns(RuntimeWarning, match="two halves"):
        res = fit(model, images, labels, cfg)
    assert len(res.history) == 2 and res.history[-1]["acc"] > 0.3, res.history  # it trained (chance 0.1)
    # one failed 64, then halves: 32 + 32, and the last batch of 400 rows (16) as 8 + 8
    assert model.calls[0] == 64 and set(model.calls[1:]) == {32, 8}, sorted(set(model.calls))
    # the same data and seed without the failure: the same number of steps, close weights
    plain = build_model("small_cnn", 10, (16, 16), seed=0)
    plain_res = fit(plain, images, labels, cfg)
    assert abs(plain_res.history[-1]["acc"] - res.history[-1]["acc"]) < 0.15

    # half does not fit either: one line naming the option
    model = OOMAbove(build_model("small_cnn", 10, (16, 16), seed=0), limit=20)
    with pytest.raises(VetsetError, match=r"batch size 32 .*lower the batch size \(batch_size, --batch-size\)"):
        with pytest.warns(RuntimeWarning):
            fit(model, images, labels, cfg)


# ----------------------------------------------------------------------------- forced switches


@pytest.fixture(scope="module")
def digits_split():
    from pipelines.embedded import load_digits_rgb
    from pipelines.simulate import SimulationSpec, simulate

    ds = load_digits_rgb(size=16)
    perm = np.random.default_rng(0).permutation(len(ds))
    train, test = ds.subset(perm[:1200]), ds.subset(perm[1200:])
    sim = simulate(train, SimulationSpec(attack="badnets", poison_rate=0.1, target=0, seed=1))
    return sim, test


def test_the_trainer_with_every_gpu_switch_forced_matches_fp32_eager(digits_split):
    """bf16 autocast + channels_last + torch.compile (inductor) + the fused optimiser in fit
    (and the first three in predict_logits):
    the model learns the task and the backdoor as the fp32 eager one does."""
    from trainers import build_model, evaluate, fit, predict_logits, preset

    sim, test = digits_split
    cfg = preset("cpu_small", epochs=6, device="cpu")
    # whole batches only (1,152 of the 1,200 rows): a last, smaller batch makes torch.compile
    # build the training graph a second time, ~40 s of gcc on a cold 2-core CI machine
    n = len(sim.dataset.labels) // cfg.batch_size * cfg.batch_size
    images, labels = sim.dataset.images[:n], sim.dataset.labels[:n]
    results = {}
    for mode, switched in (("fp32", ()), ("forced", ALL)):
        with force(*switched):
            model = build_model("small_cnn", 10, (16, 16), seed=0)
            res = fit(model, images, labels, cfg)
            results[mode] = (evaluate(model, test, sim.trigger), res, model)
    (fp, _, _), (fo, fo_res, fo_model) = results["fp32"], results["forced"]
    print(f"fp32 CA {fp['clean_acc']:.3f} ASR {fp['asr']:.3f}; forced CA {fo['clean_acc']:.3f} ASR {fo['asr']:.3f}")
    # measured on the 1,152 rows (benchmarks/forced_switches.py --parts trainer, model seeds 0-2
    # x 1/2 threads, AVX2): CA fp32 0.848-0.883, forced 0.874-0.894, |difference| <= 0.041;
    # ASR fp32 0.767-0.961, forced 0.741-0.957 (a model that missed the backdoor: ~0.1)
    assert fo["clean_acc"] > 0.75 and abs(fo["clean_acc"] - fp["clean_acc"]) < 0.08, (fp, fo)
    assert fo["asr"] > 0.6 and fp["asr"] > 0.6, (fp, fo)
    # the weights trained under compile are the module's own (a compiled copy would leave
    # them at their initial values): the eager forward of the forced model agrees with it
    with force():
        eager = predict_logits(fo_model, test.images[:200])
    with force(*ALL):
        compiled = predict_logits(fo_model, test.images[:200])
    agree = float((eager.argmax(1) == compiled.argmax(1)).mean())
    assert agree > 0.95, agree  # bf16 logits: a few near-ties may flip
    assert np.isfinite(compiled).all() and fo_res.history[-1]["loss"] < fo_res.history[0]["loss"]
