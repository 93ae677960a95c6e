"""Every GPU figure the issues ask for, in one command (issue 14).

On the GPU machine (one H200; copy the data first with ``../shared/tools/device-data`` and
carry ``.device-data``; the machine has no network, so cleanlab travels as a wheel, see
docs/benchmarks.md)::

    bash benchmarks/gpu_suite.sh        # = gpu_suite.py --data .device-data/cifar10 --single-file --out $OUT

On the CPU, every section at toy size (what tests/test_gpu_suite.py runs, so the suite
cannot rot)::

    python benchmarks/gpu_suite.py --smoke --out /tmp/suite

Sections, in this order (``--only a,b`` runs some; a section's figures are saved to
``OUT/<section>.json`` the moment it ends (not with ``--single-file``), and ``OUT/summary.md``
/ ``OUT/suite.json`` are rewritten after each, so a run cut short keeps what it measured):

- ``speed``: PreAct-ResNet18 epochs with vetset's loop (data on the GPU, bf16, channels_last,
  torch.compile, batch 512) against a conventional PIL + DataLoader fp32 loop, same model,
  the ratio (target <= 1.0 s/epoch).
- ``clean_ca``: clean CA after the 30-epoch fast recipe, seconds with compilation (target
  93% in 60 s; the shared JPEG CIFAR-10 reached 91.2% on an H100).
- ``audit``: the default audit on all 50,000 rows for BadNets, Blended, the hybrid (5%
  Blended + 10% instance-dependent noise), SIG and WaNet at 10%: TPR / FPR / F1 / AUROC per
  detector and fused, seconds (target <= 2 min each, fused F1 >= 97.5%).
- ``defenses``: the undefended BadNets-10% model, curate-then-train on the BadNets audit's
  flags, and PDB: CA / ASR / seconds.
- ``purify``: each purifier at its published defaults on the undefended BadNets model with
  2,500 clean test rows: CA / ASR / seconds.
- ``vdc``: VDC question-answering throughput at the LLaVA-1.5-7B shape (random weights).
- ``selection``: BadNets at a 1% budget with random vs LPS-selected rows (docs/selection.md):
  the undefended model's CA / ASR on each, and LPS's seconds.

``--budget`` (seconds, default 540 = 9 minutes): before each section and each audit /
purifier, the suite compares the time left with what that step is expected to take and skips
it (recorded as skipped, with the reason) rather than be killed half-way.

Needs only torch, numpy, pandas, pyarrow, pillow, scikit-learn, cleanlab, torchvision and
transformers (no prefect, no datasets).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SECTIONS = ("speed", "clean_ca", "audit", "defenses", "purify", "vdc", "clip", "selection")
PURIFIERS = ("ft", "fp", "nc", "sau", "npd", "ftsam", "tsbd", "awm")


@dataclass(frozen=True)
class Scale:
    """How big each section runs. ``estimates``: seconds each step is expected to take, for
    the budget (GPU: from the H100 figures in ../shared/ENVIRONMENT.md, rounded up)."""

    name: str
    device: str
    arch: str
    preset: str
    train_rows: int  # 0 = the whole train split
    test_rows: int  # 0 = the whole test split
    speed_epochs: int
    baseline_epochs: int
    baseline_workers: int
    ca_epochs: int
    compile: bool
    audit_scenarios: tuple[str, ...]
    audit_rate: float
    audit_options: dict = field(default_factory=dict)
    defense_epochs: int = 30
    clean_rows: int = 2500
    purify_options: dict = field(default_factory=dict)
    vdc_argv: tuple[str, ...] = ()
    clip_argv: tuple[str, ...] = ()  # benchmarks/clip_speed.py: open_clip embedding speed, clip / clip_knn decisions
    selection_budget: float = 0.01
    selection_options: dict = field(default_factory=dict)
    estimates: dict = field(default_factory=dict)


GPU = Scale(
    name="gpu", device="cuda", arch="preact_resnet18", preset="fast", train_rows=0, test_rows=0,
    speed_epochs=4, baseline_epochs=2, baseline_workers=8, ca_epochs=30, compile=True,
    audit_scenarios=("badnets", "blended", "hybrid", "sig", "wanet"), audit_rate=0.1,
    defense_epochs=30, clean_rows=2500,
    vdc_argv=("--arch", "llava-1.5-7b", "--device", "cuda", "--images", "64", "--batch-sizes", "32", "64",
              "--generate-images", "32", "--generate-batch", "16", "--one-by-one-images", "2"),
    clip_argv=("--arch", "ViT-B-32", "--rows", "20000", "--batch-size", "512", "--device", "cuda",
               "--decide-rows", "50000"),
    # guesses until the first GPU run replaces them with measured figures: the audit trains the
    # detection model (30 epochs) and, on CUDA, confident learning's 5 fold models
    estimates={"speed": 50, "clean_ca": 60, "audit": 200, "reference": 40, "defenses": 130, "purify": 30,
               "vdc": 90, "clip": 60, "selection": 120},
)

SMOKE = Scale(
    name="smoke", device="cpu", arch="small_cnn", preset="cpu_small", train_rows=500, test_rows=200,
    speed_epochs=2, baseline_epochs=1, baseline_workers=0, ca_epochs=1, compile=False,
    audit_scenarios=("badnets", "hybrid"), audit_rate=0.1,
    audit_options={d: {"epochs": 1} for d in ("agpd", "dynamics", "confident", "sentinet")},
    defense_epochs=1, clean_rows=100,
    purify_options={"ft": {"epochs": 1}, "fp": {"epochs": 1}, "sau": {"epochs": 1},
                    "npd": {"warmup_epochs": 0, "epochs": 1},
                    "nc": {"reverse_epochs": 1, "reverse_rows": 40, "epochs": 1},
                    "ftsam": {"epochs": 1}, "tsbd": {"unlearn_max_epochs": 1, "epochs": 1, "sweep": [0.3]},
                    "awm": {"steps": 2, "batch_size": 20}},
    vdc_argv=("--arch", "tiny", "--device", "cpu", "--images", "4", "--batch-sizes", "4",
              "--generate-images", "2", "--generate-batch", "4", "--one-by-one-images", "1",
              "--image-size", "56", "--desc-new", "4", "--yesno-new", "2"),
    clip_argv=("--arch", "ViT-B-32", "--rows", "8", "--batch-size", "8", "--device", "cpu", "--decide-rows", "600"),
    selection_budget=0.02, selection_options={"rounds": 1},
    estimates={"speed": 5, "clean_ca": 3, "audit": 15, "reference": 3, "defenses": 10, "purify": 5, "vdc": 15,
               "clip": 5, "selection": 5},
)


class Suite:
    """Runs the sections, keeps the time budget, and saves every result as it comes."""

    def __init__(self, scale: Scale, out: Path, data: Path, budget: float, seed: int = 0,
                 log: Callable[[str], Any] = print, section_files: bool = True):
        self.scale, self.out, self.data, self.budget, self.seed = scale, out, data, budget, seed
        self.section_files = section_files
        self.log = log
        self.t0 = time.perf_counter()
        self.results: dict[str, Any] = {}
        self.shared: dict[str, Any] = {}  # what one section leaves for another (models, audits)
        self.planned: list[str] = []
        self.out.mkdir(parents=True, exist_ok=True)

    # -- bookkeeping --------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def fits(self, step: str, what: str, reserve: float = 0.0) -> bool:
        """True when ``what`` (expected to take the estimate of ``step``) fits in the time left,
        keeping ``reserve`` seconds for what must come after it."""
        left = self.budget - self.elapsed()
        need = self.scale.estimates.get(step, 0)
        if need + reserve > left:
            self.log(f"[{self.elapsed():6.0f}s] skipped {what}: {left:.0f}s of the budget left, it takes ~{need}s"
                     + (f" and {reserve:.0f}s are kept for the sections after it" if reserve else ""))
            return False
        return True

    def save(self, section: str, result: dict) -> None:
        self.results[section] = result
        if self.section_files:
            _atomic_write(self.out / f"{section}.json", json.dumps(result, indent=1, default=_jsonable) + "\n")
        doc = {"scale": self.scale.name, "machine": machine(), "elapsed_s": round(self.elapsed(), 1),
               "budget_s": self.budget, "sections": self.results}
        _atomic_write(self.out / "suite.json", json.dumps(doc, indent=1, default=_jsonable) + "\n")
        _atomic_write(self.out / "summary.md", summary_markdown(doc))

    def run(self, sections: list[str]) -> dict:
        self.log(f"gpu_suite ({self.scale.name}) on {machine()['device']}: sections {', '.join(sections)}; "
                 f"budget {self.budget:.0f}s")
        self.planned = list(sections)
        for name in sections:
            if not self.fits(name, f"section {name}"):
                self.save(name, {"skipped": "time budget"})
                continue
            self.log(f"[{self.elapsed():6.0f}s] section {name}")
            start = time.perf_counter()
            try:
                result = getattr(self, f"section_{name}")()
            except Exception as exc:  # noqa: BLE001  (one broken section must not lose the others)
                result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          "traceback": traceback.format_exc(limit=8)}
                self.log(f"section {name} FAILED: {result['error']}")
            result["seconds"] = round(time.perf_counter() - start, 2)
            self.save(name, result)
            self.log(f"[{self.elapsed():6.0f}s] section {name} done in {result['seconds']:.0f}s")
        return self.results

    # -- data ---------------------------------------------------------------------------
    def train_set(self):
        if "train" not in self.shared:
            self.shared["train"] = _load(self.data, "train", self.scale.train_rows)
            self.log(f"[{self.elapsed():6.0f}s] loaded {len(self.shared['train'])} train rows")
        return self.shared["train"]

    def test_set(self):
        if "test" not in self.shared:
            self.shared["test"] = _load(self.data, "test", self.scale.test_rows)
        return self.shared["test"]

    def cfg(self, epochs: int, **over):
        from trainers import preset

        return preset(self.scale.preset, epochs=epochs, device=self.scale.device, compile=self.scale.compile, **over)

    def new_model(self, ds, seed: int = 0):
        from trainers import build_model
        from trainers.train import channel_stats

        mean, std = channel_stats(ds.images)
        return build_model(self.scale.arch, ds.num_classes, ds.image_size, mean, std, seed=seed)

    # -- sections -----------------------------------------------------------------------
    def section_speed(self) -> dict:
        import torch
        from train_speed import conventional_epochs, steady

        from trainers import fit, resolve_device

        train, s = self.train_set(), self.scale
        res = fit(self.new_model(train), train.images, train.labels, self.cfg(s.speed_epochs))
        vetset = steady([h["seconds"] for h in res.history])
        times = conventional_epochs(self.new_model(train), train.images, train.labels, epochs=s.baseline_epochs,
                                    batch_size=128, lr=0.1, workers=s.baseline_workers,
                                    device=resolve_device(s.device))
        conventional = float(np.mean(times))
        out = {"model": s.arch, "rows": len(train), "vetset_s_per_epoch": vetset,
               "vetset_first_epoch_s": res.history[0]["seconds"], "vetset_epochs": s.speed_epochs,
               "vetset_recipe": f"{s.preset}, batch {res_batch(self)}, bf16/channels_last/compile per device",
               "conventional_s_per_epoch": conventional, "conventional_epochs": s.baseline_epochs,
               "conventional_recipe": f"PIL + torchvision transforms + DataLoader({s.baseline_workers} workers), fp32, "
                                      "batch 128", "speedup": conventional / vetset if vetset else None,
               "target_s_per_epoch": 1.0, "torch": torch.__version__}
        self.log(f"speed: vetset {vetset:.2f} s/epoch, conventional {conventional:.2f} s/epoch "
                 f"(x{out['speedup']:.1f})")
        return out

    def section_clean_ca(self) -> dict:
        from trainers import evaluate, fit

        train, test, s = self.train_set(), self.test_set(), self.scale
        t0 = time.perf_counter()
        model = self.new_model(train)
        res = fit(model, train.images, train.labels, self.cfg(s.ca_epochs))
        seconds = time.perf_counter() - t0
        m = evaluate(model, test, tta_flip=True)
        out = {"model": s.arch, "epochs": s.ca_epochs, "rows": len(train), "clean_acc": m["clean_acc"],
               "seconds_with_compile": seconds, "train_seconds": res.seconds, "target": "0.93 in 60 s"}
        self.log(f"clean_ca: {m['clean_acc']:.4f} after {s.ca_epochs} epochs in {seconds:.0f}s")
        return out

    def _reference_probs(self):
        if "probs" not in self.shared:
            from detectors import reference_probs

            self.shared["probs"] = reference_probs(self.train_set(), None, self.scale.device)
        return self.shared["probs"]

    def section_audit(self) -> dict:
        import cleansers  # noqa: F401  (registers the detectors)
        from cleansers import DEFAULT_DETECTORS
        from cleansers.audit import run_audit
        from cleansers.base import AuditContext
        from detectors import SCENARIOS, cell_rows, make_spec, undefended_asr
        from pipelines.outputs import RunPaths
        from pipelines.simulate import simulate

        train, test, s = self.train_set(), self.test_set(), self.scale
        detectors = list(DEFAULT_DETECTORS)
        cells = []
        # the first scenario (BadNets) always runs when it fits; each further one only when it
        # leaves time for the defenses, a few purifiers and VDC
        later = [x for x in SECTIONS[SECTIONS.index("audit") + 1:] if x in self.planned]
        e = s.estimates
        reserve = sum(e.get(x, 0) * (3 if x == "purify" else 1) for x in later)
        with tempfile.TemporaryDirectory() as tmp:
            for i, name in enumerate(s.audit_scenarios):
                need_ref = SCENARIOS[name][2] == "instance" and "probs" not in self.shared
                keep = reserve if i else 0.0
                if not self.fits("audit", f"audit {name}", keep) or (
                        need_ref and not self.fits("reference", "the instance-noise reference model",
                                                   keep + e.get("audit", 0))):
                    cells.append({"scenario": name, "skipped": "time budget"})
                    continue
                probs = self._reference_probs() if SCENARIOS[name][2] == "instance" else None
                sim = simulate(train, make_spec(name, s.audit_rate, 0.1, self.seed, probs))
                ctx = AuditContext(device=s.device, seed=self.seed)
                t0 = time.perf_counter()
                result = run_audit(sim.dataset, detectors, RunPaths(Path(tmp) / name), run_id=name, ctx=ctx,
                                   options=copy.deepcopy(s.audit_options), truth=sim.truth)
                seconds = time.perf_counter() - t0
                cell = {"scenario": name, "rate": min(s.audit_rate, 0.05) if name == "hybrid" else s.audit_rate,
                        "seed": self.seed, "seconds": seconds, "counts": sim.counts,
                        "asr": undefended_asr(ctx, sim.dataset, test, sim.trigger)}
                rows = cell_rows(cell, result.metrics["detection"], result.verdict, detectors)
                cell["rows"] = rows
                cell["headline"] = result.verdict.headline
                cells.append(cell)
                if name == "badnets":  # curate-then-train trains on what this audit left clean
                    self.shared["badnets_audit"] = (sim, result.frame[["sample_id", "flagged"]].copy())
                fused = next(r for r in rows if r["detector"] == "fused")
                self.log(f"audit {name}: fused F1 {_fmt(_m(fused, 'poisoned', 'f1'))} TPR "
                         f"{_fmt(_m(fused, 'poisoned', 'tpr'))} noisy TPR {_fmt(_m(fused, 'noisy', 'tpr'))} "
                         f"FPR {_fmt(_m(fused, 'all', 'fpr'))} in {seconds:.0f}s")
                del ctx, result
        return {"rows_audited": len(train), "detectors": detectors, "cells": cells,
                "targets": "audit of 50,000 rows <= 120 s, fused F1 >= 0.975"}

    def _badnets(self):
        """The BadNets-10% training set (from the audit section when it ran) and the
        undefended model trained on it."""
        from pipelines.simulate import SimulationSpec, simulate
        from trainers import evaluate, fit

        if "badnets_sim" not in self.shared:
            if "badnets_audit" in self.shared:
                sim = self.shared["badnets_audit"][0]
            else:
                sim = simulate(self.train_set(), SimulationSpec(attack="badnets", poison_rate=0.1, target=0,
                                                                seed=self.seed))
            self.shared["badnets_sim"] = sim
        sim = self.shared["badnets_sim"]
        if "undefended" not in self.shared:
            t0 = time.perf_counter()
            model = self.new_model(sim.dataset)
            fit(model, sim.dataset.images, sim.dataset.labels, self.cfg(self.scale.defense_epochs))
            m = evaluate(model, self.test_set(), sim.trigger)
            self.shared["undefended"] = (model, {"clean_acc": m["clean_acc"], "asr": m["asr"],
                                                 "seconds": time.perf_counter() - t0})
        return sim, *self.shared["undefended"]

    def section_defenses(self) -> dict:
        from trainers import evaluate
        from trainers.train import train_defended

        sim, _, undefended = self._badnets()
        test, s = self.test_set(), self.scale
        rows = [{"defense": "none", **undefended}]
        for defense in ("curate", "pdb"):
            options: dict = {}
            if defense == "curate":
                if "badnets_audit" not in self.shared:
                    rows.append({"defense": "curate", "skipped": "the audit section did not run (curate needs its flags)"})
                    continue
                options = {"scores": self.shared["badnets_audit"][1]}
            t0 = time.perf_counter()
            model, info = train_defended(sim.dataset, arch=s.arch, cfg=self.cfg(s.defense_epochs), defense=defense,
                                         defense_options=options, seed=self.seed, log=None)
            m = evaluate(model, test, sim.trigger)
            rows.append({"defense": defense, "clean_acc": m["clean_acc"], "asr": m["asr"],
                         "seconds": time.perf_counter() - t0,
                         **({"rows_kept": info.get("n_kept")} if defense == "curate" else {})})
            self.log(f"defense {defense}: CA {m['clean_acc']:.3f} ASR {m['asr']:.3f}")
        return {"attack": "badnets 10% -> class 0", "epochs": s.defense_epochs, "rows": rows}

    def section_purify(self) -> dict:
        from trainers import evaluate
        from trainers.purify import purify
        from trainers.purify.run import balanced_subset

        sim, model, _ = self._badnets()
        test, s = self.test_set(), self.scale
        clean = balanced_subset(test, s.clean_rows, self.seed)
        held = test.subset(np.flatnonzero(~np.isin(test.sample_ids, clean.sample_ids)))
        base = evaluate(model, held, sim.trigger)
        rows = [{"method": "none", "clean_acc": base["clean_acc"], "asr": base["asr"], "seconds": 0.0}]
        for method in PURIFIERS:
            if not self.fits("purify", f"purifier {method}"):
                rows.append({"method": method, "skipped": "time budget"})
                continue
            t0 = time.perf_counter()
            try:
                purified, _ = purify(method, copy.deepcopy(model), clean, dict(s.purify_options.get(method, {})),
                                     device=s.device, seed=self.seed)
                m = evaluate(purified, held, sim.trigger)
                rows.append({"method": method, "clean_acc": m["clean_acc"], "asr": m["asr"],
                             "seconds": time.perf_counter() - t0})
                self.log(f"purify {method}: CA {m['clean_acc']:.3f} ASR {m['asr']:.3f} "
                         f"in {time.perf_counter() - t0:.0f}s")
            except Exception as exc:  # noqa: BLE001
                rows.append({"method": method, "error": f"{type(exc).__name__}: {exc}"})
                self.log(f"purify {method} FAILED: {exc}")
        return {"model": s.arch, "clean_rows": len(clean), "evaluated_on": len(held), "rows": rows,
                "options": s.purify_options or "published defaults"}

    def section_vdc(self) -> dict:
        import vdc_throughput

        result = vdc_throughput.main(list(self.scale.vdc_argv))
        best = max((r for r in result["runs"] if "images_per_s" in r), key=lambda r: r["images_per_s"], default=None)
        return {"arch": result["arch"], "device": result["device"], "runs": result["runs"],
                "best_images_per_s": best["images_per_s"] if best else None,
                "best_path": f"{best['path']} (batch {best['batch']})" if best else None,
                "agreement": result.get("agreement")}


    def section_clip(self) -> dict:
        import clip_speed  # benchmarks/clip_speed.py

        result = clip_speed.main([*self.scale.clip_argv, "--data", str(self.data / "train.parquet")])
        return {"embed": result.get("embed"), "decide": result["decide"]}

    def section_selection(self) -> dict:
        from pipelines.simulate import SimulationSpec, simulate
        from trainers import evaluate, fit
        from trainers.selection import simulate_selected

        train, test, s = self.train_set(), self.test_set(), self.scale
        rows = []
        for select in ("random", "lps"):
            spec = SimulationSpec(attack="badnets", poison_rate=s.selection_budget, target=0, seed=self.seed,
                                  select=select, select_params=dict(s.selection_options) if select == "lps" else {})
            t0 = time.perf_counter()
            sim = simulate(train, spec) if select == "random" else simulate_selected(train, spec, device=s.device)
            select_s = time.perf_counter() - t0
            model = self.new_model(sim.dataset)
            fit(model, sim.dataset.images, sim.dataset.labels, self.cfg(s.defense_epochs))
            m = evaluate(model, test, sim.trigger)
            rows.append({"selection": select, "n_poisoned": sim.counts["n_poisoned"], "clean_acc": m["clean_acc"],
                         "asr": m["asr"], "select_seconds": select_s})
            self.log(f"selection {select}: {sim.counts['n_poisoned']} rows, CA {m['clean_acc']:.3f} ASR {m['asr']:.3f}")
        return {"attack": "badnets", "budget": s.selection_budget, "epochs": s.defense_epochs, "rows": rows}


def res_batch(suite: Suite) -> int:
    return suite.cfg(1).batch_size


# --------------------------------------------------------------------------- helpers


def _load(data: Path, split: str, rows: int):
    from detectors import load  # benchmarks/detectors.py: an evenly spread slice (0 = all rows)

    return load(data, split, rows)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _m(row: dict, part: str, key: str):
    """A figure of one benchmarks/detectors.py row: ``part`` "all" / "poisoned" / "noisy"
    (TPR of that kind of dirt against the FPR on clean rows)."""
    return (row.get(part) or {}).get(key)


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def machine() -> dict:
    import torch

    from trainers.accel import cuda_available

    dev = torch.cuda.get_device_name(0) if cuda_available() else f"cpu ({os.cpu_count()} cores)"
    return {"device": dev, "torch": torch.__version__, "python": platform.python_version(),
            "host": platform.node()}


def summary_markdown(doc: dict) -> str:
    """The suite's figures as markdown tables (what docs/benchmarks.md records)."""
    s = doc["sections"]
    lines = [f"# gpu_suite ({doc['scale']}) on {doc['machine']['device']}, torch {doc['machine']['torch']}",
             "", f"{doc['elapsed_s']:.0f} s of a {doc['budget_s']:.0f} s budget", ""]

    def note(name: str) -> str | None:
        r = s.get(name, {})
        if "skipped" in r:
            return f"skipped ({r['skipped']})"
        if "error" in r:
            return f"FAILED: {r['error']}"
        return None

    for name in SECTIONS:
        if name not in s:
            continue
        r = s[name]
        lines.append(f"## {name}")
        bad = note(name)
        if bad:
            lines += [bad, ""]
            continue
        if name == "speed":
            lines += ["| loop | s/epoch | epochs |", "|---|---|---|",
                      f"| vetset ({r['vetset_recipe']}) | {_fmt(r['vetset_s_per_epoch'])} | {r['vetset_epochs']} |",
                      f"| {r['conventional_recipe']} | {_fmt(r['conventional_s_per_epoch'])} | "
                      f"{r['conventional_epochs']} |",
                      "", f"speed-up x{_fmt(r['speedup'], 1)} (target <= {r['target_s_per_epoch']} s/epoch)"]
        elif name == "clean_ca":
            lines += [f"{r['model']}, {r['epochs']} epochs on {r['rows']} rows: CA {_fmt(r['clean_acc'], 4)} in "
                      f"{r['seconds_with_compile']:.0f} s with compilation (target {r['target']})"]
        elif name == "audit":
            lines += ["| scenario | rate | ASR (undefended) | fused F1 | fused TPR | noisy TPR | clean FPR | seconds |",
                      "|---|---|---|---|---|---|---|---|"]
            for c in r["cells"]:
                if "skipped" in c:
                    lines.append(f"| {c['scenario']} | - | skipped ({c['skipped']}) | | | | | |")
                    continue
                f = next(x for x in c["rows"] if x["detector"] == "fused")
                lines.append(f"| {c['scenario']} | {c['rate']:g} | {_fmt(c.get('asr'))} | {_fmt(_m(f, 'poisoned', 'f1'))} | "
                             f"{_fmt(_m(f, 'poisoned', 'tpr'))} | {_fmt(_m(f, 'noisy', 'tpr'))} | "
                             f"{_fmt(_m(f, 'all', 'fpr'))} | {c['seconds']:.0f} |")
            lines += ["", "Per detector (poisoned TPR / FPR / F1 / AUROC):", ""]
            for c in r["cells"]:
                for x in c.get("rows", []):
                    if x["detector"] != "fused":
                        lines.append(f"- {c['scenario']} {x['detector']}: {_fmt(_m(x, 'poisoned', 'tpr'))} / "
                                     f"{_fmt(_m(x, 'poisoned', 'fpr'))} / {_fmt(_m(x, 'poisoned', 'f1'))} / "
                                     f"{_fmt(_m(x, 'poisoned', 'auroc'))}")
        elif name in ("defenses", "purify"):
            key = "defense" if name == "defenses" else "method"
            lines += [f"| {key} | CA | ASR | seconds |", "|---|---|---|---|"]
            for x in r["rows"]:
                if "skipped" in x or "error" in x:
                    lines.append(f"| {x[key]} | {x.get('skipped') or x.get('error')} | | |")
                else:
                    lines.append(f"| {x[key]} | {_fmt(x['clean_acc'])} | {_fmt(x['asr'])} | {x['seconds']:.0f} |")
        elif name == "selection":
            lines += [f"BadNets at {r['budget']:g} of the rows, {r['epochs']} epochs:", "",
                      "| selection | rows | CA | ASR | selection s |", "|---|---|---|---|---|"]
            lines += [f"| {x['selection']} | {x['n_poisoned']} | {_fmt(x['clean_acc'])} | {_fmt(x['asr'])} | "
                      f"{x['select_seconds']:.0f} |" for x in r["rows"]]
        elif name == "clip":
            e = r.get("embed") or {}
            lines += [f"{e.get('arch')} {e.get('input')} on {e.get('device')} ({e.get('dtype')}): "
                      f"{_fmt(e.get('images_per_second'), 1)} images/s", "",
                      "| rows | clip s | clip_knn s |", "|---|---|---|"]
            lines += [f"| {d['rows']} | {_fmt(d['clip_seconds'], 2)} | {_fmt(d['clip_knn_seconds'], 2)} |"
                      for d in r["decide"]]
        elif name == "vdc":
            lines += [f"{r['arch']} on {r['device']}: best {_fmt(r['best_images_per_s'], 2)} images/s "
                      f"({r['best_path']}); 6 questions per image"]
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON and markdown results")
    p.add_argument("--data", type=Path, default=None,
                   help="folder with train.parquet and test.parquet (default: .device-data/cifar10, else "
                        "../shared/data/cifar10)")
    p.add_argument("--smoke", action="store_true", help="every section on the CPU at toy size")
    p.add_argument("--only", default="", help=f"comma-separated sections of: {', '.join(SECTIONS)}")
    p.add_argument("--budget", type=float, default=None, help="seconds (default 540; smoke 170)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--single-file", action="store_true",
                   help="only suite.json and summary.md (the device tool brings back at most 8 files)")
    args = p.parse_args(argv)

    from pipelines.errors import VetsetError

    sections = [x for x in args.only.split(",") if x] or list(SECTIONS)
    unknown = [x for x in sections if x not in SECTIONS]
    if unknown:
        print(f"error: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    data = args.data or next((d for d in (REPO / ".device-data/cifar10", REPO.parent / "shared/data/cifar10")
                              if (d / "train.parquet").exists()), None)
    if data is None or not (data / "train.parquet").exists() or not (data / "test.parquet").exists():
        print(f"error: no train.parquet and test.parquet under {data or '.device-data/cifar10'} "
              "(run ../shared/tools/device-data and carry .device-data)", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scale = SMOKE if args.smoke else GPU
    if not args.smoke:
        from trainers.accel import cuda_available

        if not cuda_available():
            print("error: the full suite needs a CUDA device (use --smoke on a CPU machine)", file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
    budget = args.budget if args.budget is not None else (170.0 if args.smoke else 540.0)
    suite = Suite(scale, args.out, data, budget, seed=args.seed, log=lambda m: print(m, flush=True),
                  section_files=not args.single_file)
    try:
        results = suite.run(sections)
    except VetsetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print((args.out / "summary.md").read_text(), flush=True)
    failed = [k for k, v in results.items() if "error" in v]
    if failed:
        print(f"sections that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["GPU", "SMOKE", "SECTIONS", "Scale", "Suite", "asdict", "main"]
