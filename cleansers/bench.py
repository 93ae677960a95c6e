"""``vetset bench``: BackdoorBench's matrix in one command, without Prefect.

Attacks from the simulator (:mod:`pipelines.simulate`) x rates x seeds, and for each
(attack, rate, seed) one cell per kind of method:

- ``detect``: one audit with the chosen detectors (:func:`cleansers.audit.run_audit`, no
  trusted set, no rate given), TPR / FPR / precision / F1 / AUROC of every detector and of
  the fused result on the poisoned rows against the clean ones;
- ``defense``: train with an in-training defense (``trainers.defenses``: none, abl, pdb,
  curate; curate drops the rows the same audit flagged), CA / ASR / RA on the test slice,
  DER against the ``none`` cell;
- ``purify``: a purifier (``trainers.purify``) on the undefended model with a clean set of
  ``clean_fraction`` of the training rows (rows the simulator left clean), CA / ASR before
  and after, DER.

Every cell is cached: its result is one JSON file under ``<out>/cells/``, written
atomically, named by a hash of everything the cell's numbers depend on (the data's
fingerprints, the attack, rate, seed, the resolved training recipe, the method and its
options, the device type). A changed option is a different cell; a killed run leaves only
whole files, so running the same command again runs only the missing cells. What cells
share (the audit's scores, the undefended model) is kept under ``<out>/artifacts/``, keyed
the same way. Then ``bench.parquet``, ``bench.md`` and ``bench.png`` are written
(:mod:`pipelines.bench_tables`).

This module lives in cleansers because the detect and curate cells run the audit
(trainers never import cleansers; pipelines has no training). The Prefect flow
(flows/bench.py, one task per cell) and the CLI (``vetset bench``) call the functions here;
without Prefect: ``python -m cleansers.bench --data DIR ...`` (same options).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines.atomic import atomic_write_json, atomic_write_table
from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError

BENCH_VERSION = 1  # bump when a cell's meaning changes: every cached cell becomes stale
CELLS_DIR, ARTIFACTS_DIR = "cells", "artifacts"
KINDS = ("detect", "defense", "purify")


def _default_detectors() -> tuple[str, ...]:
    from . import DEFAULT_DETECTORS

    return tuple(DEFAULT_DETECTORS)


@dataclass
class BenchConfig:
    """What ``vetset bench`` runs. ``rows`` / ``test_rows``: evenly spread slices of
    ``<data>/train.parquet`` / ``test.parquet`` (0 = all). ``model`` / ``preset``: "auto" is
    PreAct-ResNet18 + fast on a GPU, the small CNN + cpu_small elsewhere. An empty
    ``detectors`` means no detect cells (curate then has no audit: an error)."""

    data: str
    out: str = "runs/bench"
    rows: int = 0
    test_rows: int = 2000
    attacks: tuple[str, ...] = ("badnets", "blended")
    rates: tuple[float, ...] = (0.1,)  # BackdoorBench's default, the rate of the published figures
    seeds: tuple[int, ...] = (0,)
    target: int = 0
    detectors: tuple[str, ...] = field(default_factory=_default_detectors)
    defenses: tuple[str, ...] = ("none", "abl", "pdb", "curate")
    purifiers: tuple[str, ...] = ()
    device: str = "auto"
    model: str = "auto"
    preset: str = "auto"
    epochs: int | None = None
    detector_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    defense_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    purifier_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    clean_fraction: float = 0.05  # the purifiers' clean set, a fraction of the training rows

    def validate(self) -> None:
        """Every input mistake as one VetsetError, before anything is loaded or written."""
        from pipelines.attacks import ATTACKS
        from pipelines.loaders import validate_source
        from trainers.defenses import DEFENSES, build_defense
        from trainers.purify import PURIFIERS, make_config

        from .base import DETECTORS
        from .run import build_detector

        data = Path(self.data)
        if not data.is_dir():
            raise VetsetError(f"--data {self.data}: no such folder (it must hold train.parquet and test.parquet)")
        for split in ("train", "test"):
            if not (data / f"{split}.parquet").is_file():
                raise VetsetError(f"--data {self.data}: no {split}.parquet in it")
            validate_source(data / f"{split}.parquet")
        if self.rows < 0 or self.test_rows < 0:
            raise VetsetError("--rows and --test-rows must be >= 0 (0 = all rows)")
        if self.epochs is not None and self.epochs < 1:
            raise VetsetError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.attacks:
            raise VetsetError("--attacks names no attack")
        if not self.rates or not self.seeds:
            raise VetsetError("--rates and --seeds need at least one value each")
        for rate in self.rates:
            if not 0.0 < rate < 1.0:
                raise VetsetError(f"poisoning rate {rate:g} is out of range: it must be in (0, 1)")
        if not 0.0 < self.clean_fraction < 1.0:
            raise VetsetError(f"--clean-fraction {self.clean_fraction:g} must be in (0, 1)")
        for name in self.attacks:
            ATTACKS.get(name)
        for name in self.detectors:
            DETECTORS.get(name)
        for name in self.defenses:
            DEFENSES.get(name)
        for name in self.purifiers:
            PURIFIERS.get(name)
        if not (self.detectors or self.defenses or self.purifiers):
            raise VetsetError("nothing to run: no detectors, defenses or purifiers")
        if "curate" in self.defenses and not self.detectors:
            raise VetsetError("--defenses curate needs --detectors (the audit whose flagged rows it drops)")
        for kind, options, known in (("detector", self.detector_options, self.detectors),
                                     ("defense", self.defense_options, self.defenses),
                                     ("purifier", self.purifier_options, self.purifiers)):
            for name in options:
                if name not in known:
                    raise VetsetError(f"options given for {kind} {name!r}, which is not in the run")
        for name, opts in self.detector_options.items():
            try:
                build_detector(name, opts)
            except TypeError as exc:
                raise VetsetError(f"{name} options: {exc}") from None
        for name, opts in self.defense_options.items():
            if "scores" in opts:
                raise VetsetError(f"{name}: the scores option is set by the bench (curate reads the audit)")
            try:
                build_defense(name, opts)
            except TypeError as exc:
                raise VetsetError(f"{name} options: {exc}") from None
        for name, opts in self.purifier_options.items():
            make_config(name, opts)
        if self.model != "auto" and ":" not in self.model:
            from trainers.models import MODELS

            MODELS.get(self.model)
        if self.preset != "auto":
            from trainers.loop import preset

            preset(self.preset)  # a one-line VetsetError naming the known presets


@dataclass(frozen=True)
class Cell:
    kind: str  # detect | defense | purify
    attack: str
    rate: float
    seed: int
    method: str  # "audit" for a detect cell, else the defense or purifier
    key: str  # hash of the spec: the cell's identity

    @property
    def label(self) -> str:
        what = "detect" if self.kind == "detect" else f"{self.kind} {self.method}"
        return f"{self.attack} {100 * self.rate:g}% seed {self.seed} {what}"

    @property
    def filename(self) -> str:
        return f"{self.kind}-{self.attack}-{self.rate:g}-s{self.seed}-{self.method}-{self.key}.json"


# ----------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def _load_split(data: str, split: str, rows: int) -> ImageDataset:
    import pyarrow.parquet as pq

    from pipelines.loaders import LoadOptions, table_to_dataset
    from pipelines.slices import spread_slice

    path = Path(data) / f"{split}.parquet"
    return table_to_dataset(spread_slice(pq.read_table(path), rows), LoadOptions(), str(path))


def load_data(cfg: BenchConfig) -> tuple[ImageDataset, ImageDataset]:
    """(training slice, test slice), cached per process."""
    return _load_split(cfg.data, "train", cfg.rows), _load_split(cfg.data, "test", cfg.test_rows)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _training(cfg: BenchConfig, seed: int) -> tuple[str, Any]:
    from trainers.train import resolve_training

    return resolve_training(cfg.model, cfg.preset, epochs=cfg.epochs, device=cfg.device, seed=seed)


def _device_type(cfg: BenchConfig) -> str:
    from trainers.accel import resolve_device

    return resolve_device(cfg.device).type


def _specs(cfg: BenchConfig, data_id: dict, attack: str, rate: float, seed: int) -> dict[str, dict]:
    """What each kind of cell (and each shared artifact) of one (attack, rate, seed) depends on."""
    base = {"version": BENCH_VERSION, "data": data_id, "attack": attack, "rate": float(rate), "seed": int(seed),
            "target": cfg.target, "device": _device_type(cfg)}
    arch, tcfg = _training(cfg, seed)
    training = {"model": arch, "train_config": tcfg.to_dict()}
    audit = {**base, "detectors": list(cfg.detectors),
             "detector_options": {k: cfg.detector_options[k] for k in sorted(cfg.detector_options)}}
    undefended = {**base, "training": training, "defense": "none", "options": cfg.defense_options.get("none", {})}
    return {"audit": audit, "undefended": undefended, "base": base, "training": training}


def cell_spec(cfg: BenchConfig, data_id: dict, kind: str, attack: str, rate: float, seed: int,
              method: str) -> dict:
    s = _specs(cfg, data_id, attack, rate, seed)
    if kind == "detect":
        return {"kind": kind, **s["audit"]}
    if kind == "defense":
        spec = {"kind": kind, **s["base"], "training": s["training"], "defense": method,
                "options": cfg.defense_options.get(method, {})}
        if method == "curate":
            spec["audit"] = _hash(s["audit"])
        return spec
    return {"kind": kind, "undefended": _hash(s["undefended"]), "purifier": method,
            "options": purifier_options(cfg, method), "clean_fraction": cfg.clean_fraction}


def purifier_options(cfg: BenchConfig, method: str) -> dict:
    """The options a purify cell runs with: the method's profile for the bench's device (its
    CPU schedule on a CPU, as `vetset purify` does; trainers/purify/base.py), then the user's."""
    from trainers.purify.base import profile_options, resolve_profile

    return profile_options(method, cfg.purifier_options.get(method, {}), resolve_profile("auto", cfg.device))


def data_identity(cfg: BenchConfig) -> dict:
    train, test = load_data(cfg)
    return {"train": train.fingerprint, "test": test.fingerprint, "rows": len(train), "test_rows": len(test)}


def list_cells(cfg: BenchConfig, data_id: dict | None = None) -> list[Cell]:
    """Every cell of the run, in order: per attack, rate and seed the detect cell (when there
    are detectors), the defenses, then the purifiers."""
    data_id = data_id if data_id is not None else data_identity(cfg)
    cells = []
    for attack in cfg.attacks:
        for rate in cfg.rates:
            for seed in cfg.seeds:
                todo = ([("detect", "audit")] if cfg.detectors else []) + [("defense", d) for d in cfg.defenses] \
                    + [("purify", p) for p in cfg.purifiers]
                for kind, method in todo:
                    spec = cell_spec(cfg, data_id, kind, attack, float(rate), int(seed), method)
                    cells.append(Cell(kind, attack, float(rate), int(seed), method, _hash(spec)))
    return cells


def cell_path(cfg: BenchConfig, cell: Cell) -> Path:
    return Path(cfg.out) / CELLS_DIR / cell.filename


def read_cell(cfg: BenchConfig, cell: Cell) -> dict | None:
    """The cell's stored result, or None when it has not run (or its file is unreadable)."""
    path = cell_path(cfg, cell)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------------------- running one cell


def _simulate(cfg: BenchConfig, attack: str, rate: float, seed: int):
    from pipelines.simulate import SimulationSpec, simulate

    train, _ = load_data(cfg)
    return simulate(train, SimulationSpec(attack=attack, poison_rate=rate, target=cfg.target, seed=seed))


def _artifact(cfg: BenchConfig, name: str) -> Path:
    return Path(cfg.out) / ARTIFACTS_DIR / name


def _audit(cfg: BenchConfig, sim, seed: int, spec: dict):
    """(scores frame, detection metrics, seconds): the audit of ``sim``; its scores are kept
    as an artifact so that the curate cell reuses them."""
    import pandas as pd
    import pyarrow as pa

    from pipelines.outputs import RunPaths

    from .audit import run_audit
    from .base import AuditContext

    path = _artifact(cfg, f"audit-{_hash(spec)}.parquet")
    if path.is_file():
        return pd.read_parquet(path), None, 0.0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = AuditContext(device=cfg.device, seed=seed)
        result = run_audit(sim.dataset, list(cfg.detectors), RunPaths(Path(tmp) / "audit"), run_id="bench",
                           ctx=ctx, options={k: dict(v) for k, v in cfg.detector_options.items()}, truth=sim.truth)
    seconds = time.perf_counter() - t0
    keep = [c for c in result.frame.columns if c in ("sample_id", "flagged", "suggested_label", "dirty_score")
            or c.endswith("_score") or c.endswith("_flag")]
    atomic_write_table(pa.Table.from_pandas(result.frame[keep], preserve_index=False), path)
    return result.frame, result.metrics["detection"], seconds


def _run_detect(cfg: BenchConfig, cell: Cell, sim) -> list[dict]:
    from pipelines.metrics import audit_metrics

    spec = _specs(cfg, data_identity(cfg), cell.attack, cell.rate, cell.seed)["audit"]
    frame, metrics, seconds = _audit(cfg, sim, cell.seed, spec)
    if metrics is None:  # the scores were there already (the curate cell ran the audit)
        metrics = audit_metrics(frame, sim.truth, list(cfg.detectors))
    rows = []
    for name in list(cfg.detectors) + ["fused"]:
        entry = metrics.get(name, {})
        m = entry.get("poisoned", entry.get("all", {}))
        rows.append({"method": name, **{k: m.get(k) for k in ("tpr", "fpr", "precision", "f1", "auroc", "n_flagged")},
                     "seconds": seconds if name == "fused" else None})
    return rows


def _undefended_model(cfg: BenchConfig, cell: Cell, sim):
    """The undefended model of this (attack, rate, seed): saved by the ``none`` defense cell
    (or trained here and saved), under artifacts/model-<hash>/."""
    from trainers.saved import load_model

    spec = _specs(cfg, data_identity(cfg), cell.attack, cell.rate, cell.seed)["undefended"]
    folder = _artifact(cfg, f"model-{_hash(spec)}")
    if (folder / "model.safetensors").is_file():
        return load_model(folder), 0.0
    model, _, seconds = _train(cfg, cell, sim, "none", dict(cfg.defense_options.get("none", {})))
    return model, seconds


def _save_undefended(cfg: BenchConfig, cell: Cell, sim, model, info: dict) -> None:
    from trainers.train import run_metrics, save_run

    spec = _specs(cfg, data_identity(cfg), cell.attack, cell.rate, cell.seed)["undefended"]
    folder = _artifact(cfg, f"model-{_hash(spec)}")
    if (folder / "model.safetensors").is_file():
        return
    arch, tcfg = _training(cfg, cell.seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        metrics = run_metrics(model, info, sim.dataset, arch=arch, cfg=tcfg)
        save_run(model, info, metrics, tmp, arch=arch, train_ds=sim.dataset, cfg=tcfg, trigger_spec=sim.trigger)
        try:
            os.replace(tmp, folder)  # the whole folder appears at once
        except OSError:  # another worker saved it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _train(cfg: BenchConfig, cell: Cell, sim, defense: str, options: dict):
    from trainers.train import train_defended

    arch, tcfg = _training(cfg, cell.seed)
    t0 = time.perf_counter()
    model, info = train_defended(sim.dataset, arch=arch, cfg=tcfg, defense=defense, defense_options=options,
                                 seed=cell.seed, log=None)
    seconds = time.perf_counter() - t0
    if defense == "none" and options == cfg.defense_options.get("none", {}):
        _save_undefended(cfg, cell, sim, model, info)
    return model, info, seconds


def _evaluate(cfg: BenchConfig, model, sim) -> dict:
    from trainers.evaluate import evaluate

    _, test = load_data(cfg)
    _, tcfg = _training(cfg, 0)
    return evaluate(model, test, sim.trigger, batch_size=tcfg.eval_batch_size)


def _run_defense(cfg: BenchConfig, cell: Cell, sim) -> list[dict]:
    options = dict(cfg.defense_options.get(cell.method, {}))
    audit_seconds = 0.0
    if cell.method == "curate":
        spec = _specs(cfg, data_identity(cfg), cell.attack, cell.rate, cell.seed)["audit"]
        frame, _, audit_seconds = _audit(cfg, sim, cell.seed, spec)
        options["scores"] = frame
    model, info, seconds = _train(cfg, cell, sim, cell.method, options)
    r = _evaluate(cfg, model, sim)
    return [{"method": cell.method, "ca": r["clean_acc"], "asr": r.get("asr"), "ra": r.get("ra"),
             "n_train": info.get("n_train"), "seconds": seconds + audit_seconds}]


def _run_purify(cfg: BenchConfig, cell: Cell, sim) -> list[dict]:
    from trainers.evaluate import der
    from trainers.purify import purify
    from trainers.purify.run import balanced_subset

    model, train_seconds = _undefended_model(cfg, cell, sim)
    before = _evaluate(cfg, model, sim)
    train, _ = load_data(cfg)
    pool = train.subset(np.flatnonzero(~sim.truth["is_poisoned"].to_numpy(bool)))
    clean = balanced_subset(pool, int(round(cfg.clean_fraction * len(train))), cell.seed)
    t0 = time.perf_counter()
    purified, info = purify(cell.method, model, clean, purifier_options(cfg, cell.method), device=cfg.device,
                            seed=cell.seed)
    seconds = time.perf_counter() - t0
    after = _evaluate(cfg, purified, sim)
    return [{"method": cell.method, "ca_before": before["clean_acc"], "asr_before": before.get("asr"),
             "ca": after["clean_acc"], "asr": after.get("asr"), "ra": after.get("ra"),
             "der": der(after["clean_acc"], after["asr"], before["clean_acc"], before["asr"]),
             "n_train": info.get("n_clean"), "seconds": seconds + train_seconds}]


RUNNERS: dict[str, Callable[[BenchConfig, Cell, Any], list[dict]]] = {
    "detect": _run_detect, "defense": _run_defense, "purify": _run_purify}


def run_cell(cfg: BenchConfig, cell: Cell) -> dict:
    """Run one cell and store its result (atomically) under ``<out>/cells/``; returns it."""
    import torch

    from . import pixel_stats  # noqa: F401  (registers outlier, also when cleansers/__init__ lacks it)

    t0 = time.perf_counter()
    sim = _simulate(cfg, cell.attack, cell.rate, cell.seed)
    rows = RUNNERS[cell.kind](cfg, cell, sim)
    seconds = time.perf_counter() - t0
    common = {"cell": cell.key, "kind": cell.kind, "attack": cell.attack, "rate": cell.rate, "seed": cell.seed}
    result = {"cell": asdict(cell), "spec": cell_spec(cfg, data_identity(cfg), cell.kind, cell.attack, cell.rate,
                                                      cell.seed, cell.method),
              "rows": [{**common, **r} for r in rows], "seconds": seconds,
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "device": _device_type(cfg), "torch_threads": torch.get_num_threads(),
              "counts": sim.counts}
    atomic_write_json(result, cell_path(cfg, cell))
    return result


def summary_line(cell: Cell, result: dict) -> str:
    """"badnets 10% seed 1 defense pdb: CA 61.0 ASR 5.0 (42 s)" (percentages)."""
    def pct(x):
        return "-" if x is None or x != x else f"{100 * x:.1f}"

    rows = result["rows"]
    if cell.kind == "detect":
        fused = next((r for r in rows if r["method"] == "fused"), rows[-1])
        text = f"fused TPR {pct(fused.get('tpr'))} FPR {pct(fused.get('fpr'))} F1 {pct(fused.get('f1'))}"
    else:
        r = rows[0]
        text = f"CA {pct(r.get('ca'))} ASR {pct(r.get('asr'))}"
        if cell.kind == "purify":
            text = f"CA {pct(r.get('ca_before'))}->{pct(r.get('ca'))} ASR {pct(r.get('asr_before'))}->{pct(r.get('asr'))}"
    return f"{cell.label}: {text} ({result['seconds']:.0f} s)"


def header(cfg: BenchConfig, data_id: dict, results: list[dict]) -> str:
    arch, tcfg = _training(cfg, 0)
    devices = sorted({r.get("device", "?") for r in results})
    return (f"Data `{cfg.data}`: {data_id['rows']} training rows, {data_id['test_rows']} test rows; attacks "
            f"{', '.join(cfg.attacks)} at {', '.join(f'{100 * r:g}%' for r in cfg.rates)} (target class "
            f"{cfg.target}), seeds {', '.join(map(str, cfg.seeds))}; model {arch}, {tcfg.epochs} epochs; "
            f"device {', '.join(devices)}. Means over seeds; per-seed rows in bench.parquet. Published "
            "figures: specs/ (BackdoorBench, CIFAR-10, PreAct-ResNet18, 10% poisoning, lossless CIFAR-10; "
            "beside curate: AGPD's retraining on its filtered data), shown at 10% only.")


def write_results(cfg: BenchConfig, data_id: dict, results: list[dict]) -> dict[str, Path]:
    from pipelines.bench_tables import write_bench

    rows = [row for r in results for row in r["rows"]]
    return write_bench(rows, cfg.out, header(cfg, data_id, results))


@dataclass
class BenchRun:
    cells: list[Cell]
    results: list[dict]
    ran: int
    cached: int
    paths: dict[str, Path]


def run_bench(cfg: BenchConfig, log: Callable[[str], Any] = print) -> BenchRun:
    """Validate, list the cells, run those not stored yet (in order, in this process), write
    the tables. A progress line per cell: ``cell 3/8 badnets 10% seed 1 defense pdb: ...``."""
    cfg.validate()
    data_id = data_identity(cfg)
    cells = list_cells(cfg, data_id)
    results, ran, cached = [], 0, 0
    for i, cell in enumerate(cells, 1):
        result = read_cell(cfg, cell)
        if result is not None:
            cached += 1
            log(f"cell {i}/{len(cells)} {cell.label}: cached")
        else:
            result = run_cell(cfg, cell)
            ran += 1
            log(f"cell {i}/{len(cells)} {summary_line(cell, result)}")
        results.append(result)
    paths = write_results(cfg, data_id, results)
    log(f"bench: {len(cells)} cells, {ran} run, {cached} cached; {', '.join(str(p) for p in paths.values())}")
    return BenchRun(cells, results, ran, cached, paths)


# ----------------------------------------------------------------------------- command line


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _numbers(text: str, kind: type, flag: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise VetsetError(f"{flag} wants comma-separated {kind.__name__}s, got {text!r}") from None


def _options(items: list[str], flag: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name.strip() or not option.strip():
            raise VetsetError(f"{flag} wants NAME.OPTION=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        out.setdefault(name.strip(), {})[option.strip()] = parsed
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="folder with train.parquet and test.parquet")
    p.add_argument("--rows", type=int, default=0, help="evenly spread training rows (0 = all)")
    p.add_argument("--test-rows", type=int, default=2000, help="evenly spread test rows (0 = all)")
    p.add_argument("--attacks", default="badnets,blended", help="simulator attacks, comma-separated")
    p.add_argument("--rates", default="0.1", help="poisoning rates, fractions of all rows, comma-separated")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--target", type=int, default=0, help="the attacks' target class")
    p.add_argument("--detectors", default=None,
                   help="detectors of the detect cells (and curate's audit); default cleansers.DEFAULT_DETECTORS; "
                        "'' for no detect cells")
    p.add_argument("--defenses", default="none,abl,pdb,curate", help="in-training defenses ('' for none)")
    p.add_argument("--purifiers", default="", help="purifiers on the undefended model, e.g. ft,fp,nc,sau")
    p.add_argument("--set", dest="detector_set", action="append", default=[], metavar="DETECTOR.OPTION=VALUE")
    p.add_argument("--defense-option", action="append", default=[], metavar="DEFENSE.OPTION=VALUE")
    p.add_argument("--purifier-option", action="append", default=[], metavar="PURIFIER.OPTION=VALUE")
    p.add_argument("--clean-fraction", type=float, default=0.05, help="purifiers' clean set, a fraction of the rows")
    p.add_argument("--model", default="auto")
    p.add_argument("--preset", default="auto")
    p.add_argument("--epochs", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/bench", help="output folder (cells/, artifacts/, bench.*)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        data=args.data, out=args.out, rows=args.rows, test_rows=args.test_rows, attacks=_names(args.attacks),
        rates=_numbers(args.rates, float, "--rates"), seeds=_numbers(args.seeds, int, "--seeds"), target=args.target,
        detectors=_default_detectors() if args.detectors is None else _names(args.detectors),
        defenses=_names(args.defenses), purifiers=_names(args.purifiers), device=args.device, model=args.model,
        preset=args.preset, epochs=args.epochs, detector_options=_options(args.detector_set, "--set"),
        defense_options=_options(args.defense_option, "--defense-option"),
        purifier_options=_options(args.purifier_option, "--purifier-option"), clean_fraction=args.clean_fraction)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cleansers.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        run_bench(config_from_args(args), log=lambda s: print(s, flush=True))
    except VetsetError as exc:
        print(f"vetset bench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
