"""Make a poisoned and/or label-noisy copy of a clean dataset with a known truth table.

Conventions (``shared/specs/attacks.md``, BackdoorBench):

* ``poison_rate`` is a fraction of the WHOLE dataset: exactly ``round(rate * N)`` rows
  (halves up), capped at the rows that can be poisoned.
* Dirty-label attacks (badnets, blended, wanet) pick rows uniformly from ALL classes,
  target included; every picked row gets the trigger and label ``target``. Rows already of
  the target class keep their label but still carry the trigger and count as poisoned.
* Clean-label attacks (sig) pick only from target-class rows and keep labels.
* WaNet noise mode also warps ``cross_ratio`` x as many other rows with a random field and
  keeps their labels; those rows are NOT poisoned in the truth table (as in the paper).
  Their count is in ``SimulationResult.counts["n_cross"]``.
* Label noise (``noise_rate``, also a fraction of the whole dataset) goes only to rows that
  are not poisoned, so in a hybrid dataset ``is_poisoned`` and ``is_noisy`` are disjoint
  (VDC's hybrid setting). WaNet cross rows may receive label noise.
* Unreadable rows (``ds.unreadable``) are never poisoned, warped or relabelled.
* Which rows are poisoned (``select``): "random" (the default, above), or a learned selection
  that picks the rows a model finds hardest (``lps``, Zhu et al. 2023) or forgets most
  (``fus``, Xia et al. 2022). Those need training, so they live in :mod:`trainers.selection`
  (``simulate_selected``), which hands the chosen rows to :func:`simulate` as
  ``poison_rows``; they choose among the rows of the non-target classes (dirty-label
  attacks) or of the target class (clean-label), an equal share per class. The truth table's
  ``selection`` column names the strategy on each poisoned row.
* Randomness: the trigger comes from ``seed`` (see :mod:`pipelines.attacks`); row choices
  use independent streams ``np.random.default_rng([seed, 10 | 11 | 12])`` for poisoned,
  cross and noisy rows. Same seed, same result.

Sample ids are unchanged, so ``truth.parquet`` joins to any score table by ``sample_id``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .attacks import Attack, build_attack
from .dataset import ImageDataset
from .errors import VetsetError
from .noise import apply_label_noise, build_noise, round_count

TRUTH_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("is_poisoned", pa.bool_()),
    ("is_noisy", pa.bool_()),
    ("attack", pa.string()),
    ("original_label", pa.int64()),
    ("selection", pa.string()),  # how the poisoned row was chosen: random, lps, fus ("" = not poisoned)
])
SELECTIONS = ("random", "lps", "fus")


@dataclass
class SimulationSpec:
    """What to simulate. ``attack``/``noise`` None means none of that kind."""

    attack: str | None = None
    poison_rate: float = 0.1  # BackdoorBench default: 10% of the training set
    target: int = 0  # BackdoorBench default: all-to-one, target class 0
    attack_params: dict = field(default_factory=dict)
    noise: str | None = None
    noise_rate: float = 0.0
    seed: int = 0
    noise_params: dict = field(default_factory=dict)
    select: str = "random"  # which rows to poison: random | lps | fus (see the module docstring)
    select_params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise VetsetError(f"unknown selection {self.select!r}; known: {', '.join(SELECTIONS)}")

    def to_dict(self) -> dict:
        """JSON-able: array parameters (instance noise's reference probabilities) are
        replaced by their shape."""
        d = asdict(self)
        for key in ("attack_params", "noise_params", "select_params"):
            d[key] = {k: (f"array {list(np.shape(v))}" if isinstance(v, np.ndarray) else v) for k, v in d[key].items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SimulationSpec":
        return cls(**d)


@dataclass
class SimulationResult:
    dataset: ImageDataset
    truth: pd.DataFrame
    trigger: dict | None
    spec: SimulationSpec | None = None
    counts: dict = field(default_factory=dict)


def _check_rate(name: str, rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise VetsetError(f"{name} must be in [0, 1], got {rate}")
    return rate


def _choose(rng: np.random.Generator, candidates: np.ndarray, k: int) -> np.ndarray:
    k = min(int(k), len(candidates))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(rng.choice(candidates, size=k, replace=False)).astype(np.int64)


def poison_candidates(ds: ImageDataset, attack: Attack, learned: bool) -> np.ndarray:
    """The rows ``attack`` may poison: readable rows (of the target class only for a
    clean-label attack); a learned selection leaves the target class out of a dirty-label
    attack (its rows would keep their label: they teach the trigger least)."""
    readable = ~ds.unreadable
    if attack.clean_label:
        mask = readable & (ds.labels == attack.target)
    else:
        mask = readable & (ds.labels != attack.target) if learned else readable
    return np.flatnonzero(mask)


def poison_budget(spec: SimulationSpec, n: int) -> int:
    return round_count(_check_rate("poison_rate", spec.poison_rate), n)


def make_attack(ds: ImageDataset, spec: SimulationSpec) -> Attack:
    if not 0 <= int(spec.target) < ds.num_classes:
        raise VetsetError(f"target class {spec.target} is not in 0..{ds.num_classes - 1}")
    return build_attack(spec.attack, target=spec.target, params=spec.attack_params, seed=spec.seed,
                        image_size=ds.image_size)


def simulate(ds: ImageDataset, spec: SimulationSpec, poison_rows: np.ndarray | None = None) -> SimulationResult:
    """Poison and/or label-noise a copy of ``ds`` as ``spec`` says (``ds`` is not modified).
    ``poison_rows``: the rows a learned selection chose (:mod:`trainers.selection`); needed
    when ``spec.select`` is not "random", refused otherwise."""
    n = len(ds)
    images = ds.images.copy()
    labels = ds.labels.copy()
    readable = ~ds.unreadable
    poisoned = np.zeros(n, dtype=bool)
    noisy = np.zeros(n, dtype=bool)
    attack_col = np.full(n, "", dtype=object)
    trigger = None
    counts: dict = {"n_rows": n, "n_unreadable": int(ds.unreadable.sum()),
                    "n_poisoned": 0, "n_cross": 0, "n_noisy": 0}

    selection_col = np.full(n, "", dtype=object)
    learned = spec.select != "random"
    if (poison_rows is not None) != (learned and bool(spec.attack)):
        raise VetsetError(f"selection {spec.select!r}: " + (
            "the poisoned rows come from trainers.selection.simulate_selected" if poison_rows is None
            else "poison_rows are only for a learned selection (lps, fus) with an attack"))
    if spec.attack:
        attack: Attack = make_attack(ds, spec)
        candidates = poison_candidates(ds, attack, learned)
        budget = poison_budget(spec, n)
        if learned:
            rows = np.unique(np.asarray(poison_rows, dtype=np.int64))
            if len(rows) != min(budget, len(candidates)) or not np.isin(rows, candidates).all():
                raise VetsetError(f"selection {spec.select!r} gave {len(rows)} rows, not {min(budget, len(candidates))} "
                                  "distinct rows among the candidates")
        else:
            rows = _choose(np.random.default_rng([spec.seed, 10]), candidates, budget)
        if len(rows):
            images[rows] = attack.apply(ds.images[rows])
            if not attack.clean_label:
                labels[rows] = attack.target
        poisoned[rows] = True
        attack_col[rows] = attack.name
        selection_col[rows] = spec.select
        counts["n_poisoned"] = int(len(rows))
        counts["n_poison_candidates"] = int(len(candidates))
        counts["selection"] = spec.select

        n_cross = attack.n_cross(len(rows))
        if n_cross:
            cross_rng = np.random.default_rng([spec.seed, 11])
            cross = _choose(cross_rng, np.flatnonzero(readable & ~poisoned), n_cross)
            if len(cross):
                images[cross] = attack.apply_cross(ds.images[cross], cross_rng)
            counts["n_cross"] = int(len(cross))
        trigger = attack.spec()

    if spec.noise:
        rate = _check_rate("noise_rate", spec.noise_rate)
        noise = build_noise(spec.noise, ds.class_names, spec.noise_params)
        result = apply_label_noise(labels, noise, rate, np.random.default_rng([spec.seed, 12]),
                                   allowed=readable & ~poisoned)
        labels = result.labels
        noisy[result.rows] = True
        attack_col[result.rows] = noise.name
        counts["n_noisy"] = int(len(result.rows))
        counts["noise"] = noise.describe()

    truth = pd.DataFrame({
        "sample_id": pd.Series(ds.sample_ids.tolist(), dtype=object),
        "is_poisoned": poisoned,
        "is_noisy": noisy,
        "attack": pd.Series(attack_col.tolist(), dtype=object),
        "original_label": ds.labels.astype(np.int64),
        "selection": pd.Series(selection_col.tolist(), dtype=object),
    })
    out = ds.replace(images=images, labels=labels)
    return SimulationResult(dataset=out, truth=truth, trigger=trigger, spec=spec, counts=counts)


def truth_table(truth: pd.DataFrame) -> pa.Table:
    """The truth DataFrame as an Arrow table with the fixed ``TRUTH_SCHEMA``."""
    return pa.Table.from_pandas(truth[TRUTH_SCHEMA.names], schema=TRUTH_SCHEMA, preserve_index=False)


def write_simulation(result: SimulationResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``data.parquet`` (HF image layout, PNG), ``truth.parquet``, ``trigger.json``
    (only when there is an attack; a stale one is removed) and ``simulation.json`` (spec +
    counts) under ``out_dir``, each atomically. Returns {name: path}."""
    from .atomic import atomic_write_json, atomic_write_table
    from .parquet_io import write_dataset_parquet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"data": out / "data.parquet", "truth": out / "truth.parquet",
             "simulation": out / "simulation.json"}
    write_dataset_parquet(result.dataset, paths["data"])
    atomic_write_table(truth_table(result.truth), paths["truth"])
    trigger_path = out / "trigger.json"
    if result.trigger is not None:
        atomic_write_json(result.trigger, trigger_path)
        paths["trigger"] = trigger_path
    elif trigger_path.exists():
        trigger_path.unlink()
    summary = {
        "spec": result.spec.to_dict() if result.spec is not None else None,
        "counts": result.counts,
        "class_names": list(result.dataset.class_names),
        "image_size": list(result.dataset.image_size),
        "trigger": result.trigger,
    }
    json.dumps(summary)  # fail here, not half-way through the write, if not JSON-able
    atomic_write_json(summary, paths["simulation"])
    return paths
