"""Training checkpoints: a run killed with SIGKILL resumes at the epoch it was in and ends
with the weights (and the recorded training margins) of a run that was never killed."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    import numpy as np, torch
    torch.set_num_threads(1)
    from cleansers.detection_model import MarginRecorder
    from pipelines.embedded import load_digits_rgb
    from trainers.loop import Checkpoint, TrainHooks, fit, preset
    from trainers.models import build_model

    ds = load_digits_rgb(size=16)
    cfg = preset("cpu_small", epochs=4, seed=3, device="cpu")
    model = build_model("small_cnn", 10, (16, 16), seed=3)
    rec = MarginRecorder(cfg.epochs, len(ds), torch.device("cpu"))
    kill_at = int(os.environ.get("KILL_AT_EPOCH", "-1"))
    started = []

    def start(epoch, m):
        started.append(epoch)
        rec.on_epoch_start(epoch, m)

    def end(epoch, m):
        if epoch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # the checkpoint of this epoch is not written yet
        return False

    ck = None if sys.argv[1] == "none" else Checkpoint(sys.argv[1], rec.state, rec.restore)
    fit(model, ds.images, ds.labels, cfg, TrainHooks(loss_fn=rec, on_epoch_start=start, on_epoch_end=end),
        checkpoint=ck)
    torch.save({{"state": model.state_dict(), "margins": rec.margins, "started": started}}, sys.argv[2])
''')


def _run(tmp_path: Path, checkpoint: str, out: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if kill_at is not None:
        env["KILL_AT_EPOCH"] = str(kill_at)
    return subprocess.run([sys.executable, str(script), checkpoint, out], env=env, capture_output=True, text=True,
                          timeout=600)


def test_a_killed_training_resumes_where_it_stopped_and_matches_an_uninterrupted_one(tmp_path):
    ck = str(tmp_path / "ck.pt")
    killed = _run(tmp_path, ck, str(tmp_path / "never.pt"), kill_at=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert Path(ck).exists() and not (tmp_path / "never.pt").exists()
    saved = torch.load(ck, weights_only=True)
    assert saved["epoch"] == 1  # epochs 0 and 1 were saved; epoch 2 was under way

    resumed = _run(tmp_path, ck, str(tmp_path / "resumed.pt"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = _run(tmp_path, "none", str(tmp_path / "straight.pt"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    a = torch.load(tmp_path / "resumed.pt", weights_only=True)
    b = torch.load(tmp_path / "straight.pt", weights_only=True)
    assert a["started"] == [2, 3] and b["started"] == [0, 1, 2, 3]
    for key in b["state"]:
        torch.testing.assert_close(a["state"][key], b["state"][key], rtol=0, atol=0, msg=key)
    assert torch.equal(torch.nan_to_num(a["margins"]), torch.nan_to_num(b["margins"]))

    # a finished checkpoint is the finished model: nothing trains again
    again = _run(tmp_path, ck, str(tmp_path / "again.pt"))
    assert again.returncode == 0 and torch.load(tmp_path / "again.pt", weights_only=True)["started"] == []


def test_a_checkpoint_of_another_run_is_ignored(tmp_path):
    from pipelines.embedded import load_digits_rgb
    from trainers.loop import Checkpoint, fit, preset
    from trainers.models import build_model

    ds = load_digits_rgb(size=16).subset(np.arange(200))
    ck = Checkpoint(tmp_path / "ck.pt")
    cfg = preset("cpu_small", epochs=1, seed=0, device="cpu")
    fit(build_model("small_cnn", 10, (16, 16), seed=0), ds.images, ds.labels, cfg, checkpoint=ck)
    other = preset("cpu_small", epochs=2, seed=1, device="cpu")  # another config: starts from scratch
    res = fit(build_model("small_cnn", 10, (16, 16), seed=0), ds.images, ds.labels, other, checkpoint=ck)
    assert len(res.history) == 2 and [h["epoch"] for h in res.history] == [0, 1]
    (tmp_path / "ck.pt").write_bytes(b"torn")
    res = fit(build_model("small_cnn", 10, (16, 16), seed=0), ds.images, ds.labels, other, checkpoint=ck)
    assert len(res.history) == 2
