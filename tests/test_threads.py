"""The audit's fixed thread count: the same data and seed give the same scores and flags
whatever torch's thread setting was before the audit (trainers/threads.py)."""
import numpy as np
import pytest
import torch

from cleansers.base import AUDIT_THREADS, AuditContext
from cleansers.run import run_detector
from pipelines.embedded import load_digits_rgb
from pipelines.simulate import SimulationSpec, simulate
from trainers.threads import fixed_threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_fixed_threads_sets_and_restores(keep_threads):
    torch.set_num_threads(1)
    with fixed_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == 1
    with fixed_threads(None):
        assert torch.get_num_threads() == 1
    with pytest.raises(RuntimeError), fixed_threads(2):
        raise RuntimeError("the count comes back on an error too")
    assert torch.get_num_threads() == 1


def test_a_detector_gives_the_same_scores_whatever_the_callers_thread_setting(keep_threads):
    sim = simulate(load_digits_rgb(size=16), SimulationSpec(attack="badnets", poison_rate=0.1, target=0, seed=1))
    runs = []
    for outer in (1, 2):
        torch.set_num_threads(outer)
        ctx = AuditContext(device="cpu", seed=0)
        assert ctx.threads == AUDIT_THREADS
        result = run_detector("dynamics", sim.dataset, ctx, {"epochs": 4})
        assert torch.get_num_threads() == outer  # the caller's setting is back
        runs.append(result)
    a, b = runs
    np.testing.assert_array_equal(a.score, b.score)  # bit for bit, not close
    np.testing.assert_array_equal(a.flag, b.flag)
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
