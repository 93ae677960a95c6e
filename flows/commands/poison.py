"""`vetset poison`: simulate attacks and label noise on a clean dataset."""
from __future__ import annotations

import argparse
import json

from pipelines.errors import VetsetError

from ..cli import COMMANDS, Command
from .common import parse_value


def _arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--data", required=True)
    s.add_argument("--attack", help="badnets, patch, blended, sig, wanet, lowfreq, trojan")
    s.add_argument("--rate", type=float, default=0.1, help="poisoning rate (default 0.1)")
    s.add_argument("--target", type=int, default=0)
    s.add_argument("--params", help="attack parameters as JSON, e.g. '{\"alpha\": 0.1}'")
    s.add_argument("--key", help="blended: the key image to blend (a file, or skimage:NAME for a photo that "
                                 "ships with scikit-image, e.g. skimage:astronaut)")
    s.add_argument("--noise", help="symmetric, pairflip or instance (instance-dependent: trains a reference model "
                                   "first, a few minutes on a CPU, and flips rows where it is unsure)")
    s.add_argument("--device", default="auto",
                   help="where the instance-noise reference model and the lps/fus surrogate train")
    s.add_argument("--noise-rate", type=float, default=0.0)
    s.add_argument("--select", default="random", choices=["random", "lps", "fus"],
                   help="which rows to poison: random (default), lps (learnable poisoning-sample selection: the rows "
                        "a surrogate model finds hardest) or fus (the rows it forgets most); lps and fus train a "
                        "surrogate first (about one training's time; docs/selection.md)")
    s.add_argument("--select-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the selection, e.g. rounds=10 (lps), iterations=3 (fus); repeatable")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="folder for data.parquet, truth.parquet, trigger.json")


def cmd_poison(args: argparse.Namespace) -> int:
    from pipelines.loaders import load_dataset
    from pipelines.simulate import SimulationSpec, write_simulation
    from trainers.selection import simulate_selected

    if not args.attack and not args.noise:
        raise VetsetError("nothing to simulate: give --attack and/or --noise")
    params = parse_value(args.params) if args.params else {}
    if not isinstance(params, dict):
        raise VetsetError("--params must be a JSON object, e.g. '{\"alpha\": 0.1}'")
    if args.key:
        if args.attack != "blended":
            raise VetsetError("--key goes with --attack blended")
        params["key"] = args.key
    select_params = {}
    for item in args.select_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise VetsetError(f"--select-option wants KEY=VALUE, got {item!r}")
        select_params[key.strip()] = parse_value(value)
    if args.select != "random":
        if not args.attack:
            raise VetsetError(f"--select {args.select} chooses rows to poison: give --attack")
        from trainers.selection import make_selection_config

        make_selection_config(args.select, select_params)  # bad options fail before any loading
    elif select_params:
        raise VetsetError("--select-option goes with --select lps or fus")
    ds = load_dataset(args.data)
    noise_params = {}
    if args.noise == "instance":
        from cleansers.detection_model import reference_probabilities

        print("instance noise: training a reference model (3 folds) for the flips ...", flush=True)
        noise_params["probs"] = reference_probabilities(ds, device=args.device, seed=args.seed + 12345)
    spec = SimulationSpec(attack=args.attack, poison_rate=args.rate, target=args.target, attack_params=params,
                          noise=args.noise, noise_rate=args.noise_rate, seed=args.seed, noise_params=noise_params,
                          select=args.select, select_params=select_params)
    if args.select != "random":
        print(f"{args.select}: training a surrogate model to choose the rows to poison ...", flush=True)
    result = simulate_selected(ds, spec, device=args.device, log=lambda m: print(m, flush=True))
    files = write_simulation(result, args.out)
    print(json.dumps(result.counts))
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


COMMANDS.register("poison")(Command("poison", "simulate backdoor poisoning and/or label noise on a clean dataset",
                                    _arguments, cmd_poison))
