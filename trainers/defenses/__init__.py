"""In-training defenses: train a model that is safe to use on untrusted data.

Each defense is a class registered in :data:`DEFENSES` with a ``Config`` dataclass (the
published defaults, cited in its docstring) and ``train(ds, cfg, *, model_name, device,
seed, log) -> (model, info)``, built on :func:`trainers.loop.fit` and its hooks:

- ``none``: plain training (the undefended baseline);
- ``abl``: anti-backdoor learning (isolation, fine-tuning on the rest, unlearning);
- ``pdb``: proactive defensive backdoor (the saved model carries the ``pdb`` inference
  wrapper, so :func:`trainers.load_model` returns a model that is safe as it is);
- ``curate``: drop (or relabel) the rows an audit flagged, then train normally.

Use :func:`build_defense` (name + options) or the classes directly.
"""
from .base import DEFENSES, Defense, build_defense, defense_names, reads_scores
from . import none, abl, pdb, curate  # noqa: F401,E402  (registration)
from .abl import ABLDefense, isolate, train_isolation_model
from .curate import CurateDefense, curate_dataset, load_scores
from .none import NoDefense
from .pdb import PDBDefense, defensive_rows, stamp_defensive_trigger

__all__ = ["DEFENSES", "Defense", "build_defense", "defense_names", "reads_scores", "ABLDefense", "isolate",
           "train_isolation_model", "CurateDefense", "curate_dataset", "load_scores", "NoDefense",
           "PDBDefense", "defensive_rows", "stamp_defensive_trigger"]
