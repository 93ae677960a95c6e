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
    s.add_argument("--device", default="auto", help="where the instance-noise reference model trains")
    s.add_argument("--noise-rate", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="folder for data.parquet, truth.parquet, trigger.json")


def cmd_poison(args: argparse.Namespace) -> int:
    from pipelines.loaders import load_dataset
    from pipelines.simulate import SimulationSpec, simulate, write_simulation

    if not args.attack and not args.noise:
        raise VetsetError("nothing to simulate: give --attack and/or --noise")
    params = parse_value(args.params) if args.params else {}
    if not isinstance(params, dict):
        raise VetsetError("--params must be a JSON object, e.g. '{\"alpha\": 0.1}'")
    if args.key:
        if args.attack != "blended":
            raise VetsetError("--key goes with --attack blended")
        params["key"] = args.key
    ds = load_dataset(args.data)
    noise_params = {}
    if args.noise == "instance":
        from cleansers.detection_model import reference_probabilities

        print("instance noise: training a reference model (3 folds) for the flips ...", flush=True)
        noise_params["probs"] = reference_probabilities(ds, device=args.device, seed=args.seed + 12345)
    spec = SimulationSpec(attack=args.attack, poison_rate=args.rate, target=args.target, attack_params=params,
                          noise=args.noise, noise_rate=args.noise_rate, seed=args.seed, noise_params=noise_params)
    result = simulate(ds, spec)
    files = write_simulation(result, args.out)
    print(json.dumps(result.counts))
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0


COMMANDS.register("poison")(Command("poison", "simulate backdoor poisoning and/or label noise on a clean dataset",
                                    _arguments, cmd_poison))
