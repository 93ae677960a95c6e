"""The GPU-only switches forced on the CPU against fp32 eager, on the setups of the tests
(tests/test_accel.py, test_detectors.py, test_defenses.py): what the tests' tolerances were
chosen from. Prints one JSON line per (seed, threads) and a table.

    python benchmarks/forced_switches.py --seeds 0,1,2 --threads 1,2 [--parts trainer,detectors,pdb]

trainer: (CA, ASR) of the small CNN trained fp32 eager and forced (bf16 autocast + fused SGD +
channels_last + torch.compile), model seed = seed. agpd / sentinet: the same detection model,
the detectors' passes fp32 and forced. pdb: (CA, ASR) undefended, PDB fp32, PDB forced.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cleansers  # noqa: E402,F401  (registers the detectors)
from cleansers.base import AuditContext  # noqa: E402
from cleansers.run import run_detector  # noqa: E402
from pipelines.embedded import load_digits_rgb  # noqa: E402
from pipelines.metrics import auroc  # noqa: E402
from pipelines.simulate import SimulationSpec, simulate  # noqa: E402
from trainers import build_model, evaluate, fit, preset  # noqa: E402
from trainers.accel import force  # noqa: E402
from trainers.train import train_defended  # noqa: E402

ALL = ("amp", "channels_last", "compile", "fused")


PARTS = ("trainer", "detectors", "pdb")


def measure(seed: int, threads: int, parts: tuple[str, ...] = PARTS) -> dict:
    torch.set_num_threads(threads)
    out = {"seed": seed, "threads": threads}
    ds = load_digits_rgb(size=16)
    if "trainer" in parts:
        out["trainer"] = _trainer(ds, seed)
    if "detectors" in parts:
        out.update(_detectors(ds, seed))
    if "pdb" in parts:
        out["pdb"] = _pdb(seed)
    return out


def _trainer(ds, seed: int) -> dict:
    """tests/test_accel.py's setup, model seed varied: the 1,152 whole batches of 1,200 rows."""
    perm = np.random.default_rng(0).permutation(len(ds))
    sim = simulate(
        ds.subset(perm[:1200]),
        SimulationSpec(attack="badnets", poison_rate=0.1, target=0, seed=1),
    )
    test = ds.subset(perm[1200:])
    cfg = preset("cpu_small", epochs=6, device="cpu", seed=seed)
    n = len(sim.dataset.labels) // cfg.batch_size * cfg.batch_size
    r = {}
    for mode, sw in (("fp32", ()), ("forced", ALL)):
        with force(*sw):
            m = build_model("small_cnn", 10, (16, 16), seed=seed)
            fit(m, sim.dataset.images[:n], sim.dataset.labels[:n], cfg)
            e = evaluate(m, test, sim.trigger)
            r[mode] = (round(e["clean_acc"], 3), round(e["asr"], 3))
    return r


def _detectors(ds, seed: int) -> dict:
    from scipy.stats import spearmanr

    out = {}
    # detectors (tests/test_detectors.py setup, ctx seed varied)
    sim2 = simulate(
        ds, SimulationSpec(attack="badnets", poison_rate=0.1, target=0, seed=1)
    )
    pois = sim2.truth["is_poisoned"].to_numpy()
    ctx = AuditContext(device="cpu", seed=seed, expected_dirty_rate=0.1)
    fp = {
        n: run_detector(n, sim2.dataset, ctx, {"epochs": 6})
        for n in ("agpd", "sentinet")
    }
    fctx = AuditContext(
        device="cpu",
        seed=seed,
        expected_dirty_rate=0.1,
        model_cache={
            k: v for k, v in ctx.model_cache.items() if k[0] == "model" and len(k) == 4
        },
    )
    with force(*ALL):
        fo = {
            n: run_detector(n, sim2.dataset, fctx, {"epochs": 6})
            for n in ("agpd", "sentinet")
        }
    a, b = fp["agpd"], fo["agpd"]
    out["agpd"] = dict(
        argmax=(
            int(np.argmax(a.info["z_best_layer"])),
            int(np.argmax(b.info["z_best_layer"])),
        ),
        rho=round(float(spearmanr(a.score, b.score).correlation), 3),
        auroc=(round(auroc(pois, a.score), 3), round(auroc(pois, b.score), 3)),
    )
    s, t = fp["sentinet"], fo["sentinet"]
    out["sentinet"] = dict(
        jaccard=round(
            float((s.flag & t.flag).sum() / max(1, (s.flag | t.flag).sum())), 3
        ),
        rho=round(float(spearmanr(s.score, t.score).correlation), 3),
        strong=[
            e["class"] for e in t.info["class_evidence"] if e["strength"] == "strong"
        ],
        tpr=round(float(t.flag[pois].mean()), 3),
    )
    return out


def _pdb(seed: int) -> dict:
    """tests/test_defenses.py's setup, seed varied."""
    ds32 = load_digits_rgb()
    perm = np.random.default_rng(0).permutation(len(ds32))
    sim3 = simulate(
        ds32.subset(perm[:1200]),
        SimulationSpec(attack="badnets", poison_rate=0.1, seed=1),
    )
    test3 = ds32.subset(perm[1200:])
    r = {}
    for mode, sw in (("none", ()), ("fp32", ()), ("forced", ALL)):
        with force(*sw):
            mdl, info = train_defended(
                sim3.dataset,
                arch="small_cnn",
                cfg=preset("cpu_small", epochs=6, device="cpu"),
                defense="none" if mode == "none" else "pdb",
                defense_options={},
                seed=seed,
                log=None,
            )
            e = evaluate(mdl, test3, sim3.trigger)
            r[mode] = (round(e["clean_acc"], 3), round(e["asr"], 3))
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--parts", default=",".join(PARTS), help="which setups to measure")
    args = p.parse_args(argv)
    parts = tuple(x for x in args.parts.split(",") if x)
    if not parts or set(parts) - set(PARTS):
        p.error(f"--parts takes a comma-separated subset of {', '.join(PARTS)}")
    rows = []
    for t in [int(x) for x in args.threads.split(",")]:
        for s in [int(x) for x in args.seeds.split(",")]:
            rows.append(measure(s, t, parts))
            print(json.dumps(rows[-1]), flush=True)
    print(
        "\n| seed | threads | trainer CA fp32 / forced | trainer ASR fp32 / forced | AGPD same class | AGPD rank corr "
        "| AGPD AUROC fp32 / forced | SentiNet flags Jaccard | PDB CA fp32 / forced | PDB ASR fp32 / forced |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = ["-"] * 8
        if "trainer" in r:
            tr = r["trainer"]
            cells[0:2] = [f"{tr['fp32'][0]:.3f} / {tr['forced'][0]:.3f}", f"{tr['fp32'][1]:.3f} / {tr['forced'][1]:.3f}"]
        if "agpd" in r:
            ag, se = r["agpd"], r["sentinet"]
            cells[2:6] = [str(ag["argmax"][0] == ag["argmax"][1]), f"{ag['rho']:.3f}",
                          f"{ag['auroc'][0]:.3f} / {ag['auroc'][1]:.3f}", f"{se['jaccard']:.3f}"]
        if "pdb" in r:
            pd_ = r["pdb"]
            cells[6:8] = [f"{pd_['fp32'][0]:.3f} / {pd_['forced'][0]:.3f}", f"{pd_['fp32'][1]:.3f} / {pd_['forced'][1]:.3f}"]
        print(f"| {r['seed']} | {r['threads']} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
