"""Training speed: vetset's device-resident loop against a conventional PyTorch loop.

On CUDA (PreAct-ResNet18, full CIFAR-10):
  * speed: seconds per epoch after a warm-up epoch, for
      - vetset: data on the GPU as uint8, crop/flip on the GPU, bf16 autocast, channels_last,
        batch 512, OneCycle (``trainers.preset("fast")``), optionally torch.compile;
      - conventional: PIL images + torchvision transforms + DataLoader(4 workers), fp32,
        batch 128, same model and optimiser family;
  * accuracy after a full schedule (``--full-epochs``, default 30) with the vetset loop, on
    clean data and on BadNets at 10% (``pipelines.simulate``), with ASR. ``--baseline-full``
    also runs the conventional loop for the full schedule (slow).
On CPU (no GPU): small_cnn, one epoch over 10,000 CIFAR-10 images, vetset loop vs. the
conventional loop (DataLoader in-process), plus test accuracy after that epoch.

    python benchmarks/train_speed.py --data .device-data/cifar10          # GPU machine
    python benchmarks/train_speed.py --data ../shared/data/cifar10        # here (CPU)

Prints a Markdown table (and writes it with the raw numbers as JSON with ``--json PATH``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.loaders import load_dataset  # noqa: E402
from trainers import build_model, evaluate, fit, predict_logits, preset  # noqa: E402
from trainers.train import channel_stats  # noqa: E402


def conventional_epochs(model, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int,
                        lr: float, workers: int, device: torch.device, seed: int = 0) -> list[float]:
    """The usual loop: PIL images, torchvision transforms in DataLoader workers, fp32.
    Same optimiser family as the fast preset (nesterov SGD, wd 5e-4, OneCycle-like linear
    schedule through LambdaLR, label smoothing 0.1). Returns seconds per epoch."""
    import torchvision.transforms as T
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    class PILSet(Dataset):
        def __init__(self):
            self.images = [Image.fromarray(im) for im in images]
            self.tf = T.Compose([T.RandomCrop(images.shape[1], padding=4), T.RandomHorizontalFlip(), T.ToTensor()])

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.tf(self.images[i]), int(labels[i])

    torch.manual_seed(seed)
    loader = DataLoader(PILSet(), batch_size=batch_size, shuffle=True, num_workers=workers,
                        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (0.1 + 0.9 * s / (0.25 * total)) if s < 0.25 * total else max(0.0, (total - s) / (0.75 * total)))
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    model.eval()
    return times


def steady(times: list[float]) -> float:
    """Seconds per epoch after the first (warm-up / compile) epoch."""
    return float(np.mean(times[1:])) if len(times) > 1 else float(times[0])


def table(rows: list[dict]) -> str:
    cols = ["loop", "model", "device", "images", "batch", "precision", "epochs", "s/epoch", "speed-up",
            "CA", "ASR"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else (f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]))
                                     for c in cols) + " |")
    return "\n".join(out)


def run_cpu(args, train, test) -> list[dict]:
    torch.set_num_threads(args.threads) if args.threads else None
    n = min(args.cpu_rows, len(train))
    idx = np.linspace(0, len(train) - 1, n).astype(int)  # files are sorted by label: spread the picks
    x, y = train.images[idx], train.labels[idx]
    mean, std = channel_stats(x)
    rows = []
    model = build_model("small_cnn", train.num_classes, train.image_size, mean, std, seed=0)
    res = fit(model, x, y, preset("cpu_small", epochs=1, device="cpu"))
    ca = evaluate(model, test)["clean_acc"]
    rows.append(dict(loop="vetset (uint8 tensor, index augment)", model="small_cnn", device="cpu", images=n,
                     batch=128, precision="fp32", epochs=1, **{"s/epoch": res.seconds, "CA": ca}))
    if not args.skip_baseline:
        model = build_model("small_cnn", train.num_classes, train.image_size, mean, std, seed=0)
        times = conventional_epochs(model, x, y, epochs=1, batch_size=128, lr=0.1, workers=args.cpu_workers,
                                    device=torch.device("cpu"))
        ca = float((predict_logits(model, test.images).argmax(1) == test.labels).mean())
        rows.append(dict(loop=f"PIL + transforms + DataLoader({args.cpu_workers} workers)", model="small_cnn",
                         device="cpu", images=n, batch=128, precision="fp32", epochs=1,
                         **{"s/epoch": times[0], "CA": ca}))
        rows[0]["speed-up"] = rows[1]["s/epoch"] / rows[0]["s/epoch"]
    return rows


def run_cuda(args, train, test) -> list[dict]:
    from pipelines.simulate import SimulationSpec, simulate

    device = torch.device("cuda")
    mean, std = channel_stats(train.images)
    name = torch.cuda.get_device_name(0)
    rows = []
    # -- speed ---------------------------------------------------------------------------
    model = build_model("preact_resnet18", train.num_classes, train.image_size, mean, std, seed=0)
    res = fit(model, train.images, train.labels, preset("fast", epochs=args.speed_epochs, compile=args.compile))
    fast = steady([h["seconds"] for h in res.history])
    rows.append(dict(loop="vetset GPU-resident" + (" + compile" if args.compile else ""), model="preact_resnet18",
                     device=name, images=len(train), batch=512, precision="bf16, channels_last",
                     epochs=args.speed_epochs, **{"s/epoch": fast, "speed-up": None}))
    if not args.skip_baseline:
        model = build_model("preact_resnet18", train.num_classes, train.image_size, mean, std, seed=0)
        times = conventional_epochs(model, train.images, train.labels, epochs=args.speed_epochs, batch_size=128,
                                    lr=0.1, workers=4, device=device)
        rows.append(dict(loop="PIL + transforms + DataLoader(4 workers)", model="preact_resnet18", device=name,
                         images=len(train), batch=128, precision="fp32", epochs=args.speed_epochs,
                         **{"s/epoch": steady(times)}))
        rows[0]["speed-up"] = rows[1]["s/epoch"] / fast
    # -- accuracy after a full schedule -------------------------------------------------------
    if args.full_epochs > 0:
        for attack in ("clean", "badnets"):
            data, trigger = train, None
            if attack == "badnets":
                sim = simulate(train, SimulationSpec(attack="badnets", poison_rate=0.1, target=0, seed=0))
                data, trigger = sim.dataset, sim.trigger
            model = build_model("preact_resnet18", train.num_classes, train.image_size, mean, std, seed=0)
            t0 = time.perf_counter()
            res = fit(model, data.images, data.labels, preset("fast", epochs=args.full_epochs, compile=args.compile))
            total = time.perf_counter() - t0
            m = evaluate(model, test, trigger, tta_flip=True)
            rows.append(dict(loop=f"vetset full schedule, {attack}" + (" 10% -> class 0" if trigger else ""),
                             model="preact_resnet18", device=name, images=len(data), batch=512,
                             precision="bf16, channels_last", epochs=args.full_epochs,
                             **{"s/epoch": total / args.full_epochs, "CA": m["clean_acc"], "ASR": m.get("asr")}))
            if args.baseline_full and not args.skip_baseline:
                model = build_model("preact_resnet18", train.num_classes, train.image_size, mean, std, seed=0)
                times = conventional_epochs(model, data.images, data.labels, epochs=args.full_epochs,
                                            batch_size=128, lr=0.1, workers=4, device=device)
                m = evaluate(model, test, trigger, tta_flip=True)
                rows.append(dict(loop=f"conventional full schedule, {attack}", model="preact_resnet18", device=name,
                                 images=len(data), batch=128, precision="fp32", epochs=args.full_epochs,
                                 **{"s/epoch": float(np.mean(times)), "CA": m["clean_acc"], "ASR": m.get("asr")}))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=".device-data/cifar10", help="folder with train.parquet and test.parquet")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--speed-epochs", type=int, default=4)
    p.add_argument("--full-epochs", type=int, default=30)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--skip-baseline", action="store_true")
    p.add_argument("--baseline-full", action="store_true")
    p.add_argument("--cpu-rows", type=int, default=10000)
    p.add_argument("--cpu-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)

    data = Path(args.data)
    t0 = time.perf_counter()
    train = load_dataset(data / "train.parquet")
    test = load_dataset(data / "test.parquet")
    print(f"decoded {len(train)} + {len(test)} images in {time.perf_counter() - t0:.1f}s", flush=True)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    rows = run_cuda(args, train, test) if use_cuda else run_cpu(args, train, test)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
