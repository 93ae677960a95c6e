"""`vetset train` through Prefect: a real model trained on real poisoned images, saved in the
model-directory contract and evaluated with the simulator's trigger."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch

from conftest import cifar_slice


def test_vetset_train_saves_a_loadable_model_with_metrics(prefect_harness, poisoned_cifar, tmp_path, capsys):
    from flows.cli import run
    from pipelines.loaders import load_dataset
    from trainers import load_model

    pq.write_table(cifar_slice(200, "test"), tmp_path / "test.parquet")
    out = tmp_path / "model"
    code = run(["train", "--data", poisoned_cifar["data"], "--test", str(tmp_path / "test.parquet"),
                "--model", "small_cnn", "--epochs", "3", "--trigger", poisoned_cifar["trigger"], "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "clean_acc:" in printed and "asr:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 10 and (out / "model.safetensors").exists()
    assert 0.0 <= metrics["asr"] <= 1.0 and metrics["epochs"] == 3
    # the model records which rows it was trained on (purify's clean-accuracy rule reads it)
    from pipelines.dataset import row_digests
    from trainers.saved import read_training_rows

    train = load_dataset(poisoned_cifar["data"])
    assert np.array_equal(read_training_rows(out), np.unique(row_digests(train.images[~train.unreadable])))
    assert config["training_rows"]["rows"] == len(np.unique(row_digests(train.images)))

    model = load_model(out).eval()
    test = load_dataset(tmp_path / "test.parquet")
    with torch.no_grad():
        logits = model(torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255)
    acc = float((logits.argmax(1).numpy() == test.labels).mean())
    assert abs(acc - metrics["clean_acc"]) < 1e-6
    assert acc > 0.15  # 3 epochs on 600 rows: above chance (0.10)


def test_vetset_train_rejects_unknown_model_and_defense(tmp_path, poisoned_cifar, capsys):
    from flows.cli import run

    assert run(["train", "--data", poisoned_cifar["data"], "--model", "resnet9000", "--out", str(tmp_path / "m")]) == 2
    assert "unknown model 'resnet9000'" in capsys.readouterr().err
    assert run(["train", "--data", poisoned_cifar["data"], "--defense", "magic", "--out", str(tmp_path / "m")]) == 2
    assert "unknown defense 'magic'" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
