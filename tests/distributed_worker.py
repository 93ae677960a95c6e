"""Run by tests/test_distributed.py, once in one process and once under ``accelerate launch``
in two: train a BatchNorm-free net on the digits without augmentation (so the two runs take
the same steps) and save this process's weights as ``OUT/rank<R>.safetensors``.

    python tests/distributed_worker.py OUT [GLOBAL_BATCH]
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from pipelines.loaders import load_dataset
from trainers.augment import AugmentConfig
from trainers.distributed import process_rank
from trainers.loop import TrainConfig, fit


def net(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.LazyLinear(64), nn.ReLU(), nn.Linear(64, num_classes))


def train(out: Path, batch: int = 64) -> dict[str, torch.Tensor]:
    ds = load_dataset("embedded:digits")
    model = net(len(ds.class_names))
    model(torch.zeros(1, 3, *ds.images.shape[1:3]))  # materialise the lazy layer on every process alike
    cfg = TrainConfig(epochs=2, batch_size=batch, lr=0.05, device="cpu", augment=AugmentConfig(crop=False, flip=False),
                      label_smoothing=0.0, seed=0)
    rows = len(ds.labels) // (2 * batch) * (2 * batch)  # whole global batches: both runs take the same steps
    fit(model, ds.images[:rows], ds.labels[:rows], cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / f"rank{process_rank()}.safetensors"))
    return state


if __name__ == "__main__":
    train(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 64)
