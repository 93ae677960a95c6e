"""Fast checks of purification internals that the end-to-end tests (tests/test_purify.py)
cannot see: BatchNorm modes, the FT-SAM perturbation formula, the NPD polarizer's identity
start, AWM's mask optimizer. Tiny models, a few digits; seconds on one thread."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def tiny():
    from pipelines.embedded import load_digits_rgb
    from trainers import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds = load_digits_rgb()
    clean = ds.subset(np.arange(60))
    model = build_model("small_cnn", 10, (32, 32), seed=0, width=4).eval()
    yield model, clean
    torch.set_num_threads(threads)


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 3)).train()


def _bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
            for t in (m.running_mean, m.running_var)]


def _first_pass(model, x, y):
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return lambda: nn.functional.cross_entropy(model(x), y)


def test_asam_hook_uses_ftsam_formula_and_leaves_bn_statistics_alone():
    from trainers.purify.common import asam_hook

    model = _bn_net()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,))
    recompute = _first_pass(model, x, y)
    params = list(model.parameters())
    w = [p.detach().clone() for p in params]
    g = [p.grad.clone() for p in params]
    stats = _bn_state(model)
    seen = {}

    def spy():
        seen["w"] = [p.detach().clone() for p in params]
        return recompute()

    rho = 2.0
    asam_hook(rho)(model, spy)  # eta defaults to 0: eps = rho w^2 g / || |w| g ||
    norm = torch.sqrt(sum(((wi.abs() * gi) ** 2).sum() for wi, gi in zip(w, g)))
    for wi, gi, pert in zip(w, g, seen["w"]):
        assert torch.allclose(pert - wi, rho * wi ** 2 * gi / norm, atol=1e-6)
    for wi, p in zip(w, params):
        assert torch.allclose(p.detach(), wi, atol=1e-6)  # restored
    for before, after in zip(stats, _bn_state(model)):
        assert torch.equal(before, after)  # the pass at perturbed weights did not update them
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def test_gradient_norm_hook_leaves_bn_statistics_alone():
    from trainers.purify.common import gradient_norm_hook

    model = _bn_net()
    x, y = torch.rand(8, 3, 8, 8), torch.randint(0, 3, (8,))
    recompute = _first_pass(model, x, y)
    stats = _bn_state(model)
    gradient_norm_hook(0.05, 0.7)(model, recompute)
    for before, after in zip(stats, _bn_state(model)):
        assert torch.equal(before, after)


def test_ftsam_default_eta_is_zero():
    from trainers.purify import make_config

    assert make_config("ftsam").eta == 0.0


def test_npd_polarizer_starts_as_identity_and_its_bn_is_frozen_in_adversarial_epochs(tiny):
    from trainers.purify import purify
    from trainers.purify.layers import default_polarizer_path, insert_polarizer, polarizer_of
    from trainers.purify.npd import _init_identity

    model, clean = tiny
    x = torch.from_numpy(clean.images[:16]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        before = model(x)
    unchanged, _ = purify("npd", copy.deepcopy(model), clean, {"warmup_epochs": 0, "epochs": 0}, device="cpu")
    with torch.no_grad():
        assert torch.allclose(unchanged(x), before, atol=1e-4)

    path = default_polarizer_path(model)
    ref = copy.deepcopy(model)
    insert_polarizer(ref, path, ref.get_submodule(path).in_channels)
    _init_identity(ref, path, clean.images, "cpu")
    init_bn = polarizer_of(ref, path).bn
    trained, _ = purify("npd", copy.deepcopy(model), clean, {"warmup_epochs": 0, "epochs": 2, "batch_size": 20},
                        device="cpu")
    bn = polarizer_of(trained, path).bn
    # running statistics untouched by the adversarial epochs (BN in eval mode, as the authors' code)
    assert torch.allclose(bn.running_mean, init_bn.running_mean)
    assert torch.allclose(bn.running_var, init_bn.running_var)
    assert not torch.allclose(polarizer_of(trained, path).conv.weight, polarizer_of(ref, path).conv.weight)


def test_awm_mask_optimizer_option_is_used(tiny):
    from trainers.purify import purify

    model, clean = tiny
    opts = {"steps": 3, "batch_size": 20, "inner_steps": 1}
    _, adam = purify("awm", copy.deepcopy(model), clean, dict(opts), device="cpu")  # the default
    _, sgd = purify("awm", copy.deepcopy(model), clean, {**opts, "mask_optimizer": "sgd"}, device="cpu")
    # Adam (the authors' code) moves every mask by ~lr a step; SGD's mask gradient is the
    # weight times the weight's gradient, so its masks stayed near 1 (a no-op on CIFAR-10)
    assert adam["mean_mask"] < 0.995 < sgd["mean_mask"], (adam, sgd)
    assert adam["config"]["mask_optimizer"] == "adam" and sgd["config"]["mask_optimizer"] == "sgd"
