"""ABL isolation on the demo data (digits, BadNets 10% + 5% symmetric noise): AUROC on the
poisoned rows and loss percentiles per kind of row, for the demo setting and the BackdoorBench
default. CPU: python benchmarks/abl_demo_probe.py"""
import time, numpy as np
from pipelines.embedded import load_digits_rgb, demo_spec
from pipelines.simulate import simulate
from cleansers.base import AuditContext
from cleansers.run import run_detector
from pipelines.metrics import auroc
r = simulate(load_digits_rgb(), demo_spec())
t = r.truth; pois = t.is_poisoned.to_numpy(); noisy = t.is_noisy.to_numpy()
for opts in [dict(lr=0.1, augment=False, epochs=5), dict(epochs=20)]:
    t0 = time.time(); res = run_detector("abl", r.dataset, AuditContext(), opts)
    loss = -res.score
    print(opts, "sec", round(time.time()-t0,1), "AUROC poison", round(auroc(pois, res.score),3))
    for name, m in (("poison", pois), ("noisy", noisy), ("clean", ~pois & ~noisy)):
        print("  ", name, np.percentile(loss[m], [1, 10, 50, 90, 99]).round(4))
