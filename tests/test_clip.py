"""cleansers/clip: the clip and clip_knn detectors on a tiny open_clip model built from a config
with random weights (the tokenizer's vocabulary ships with open_clip), and their decisions on
planted embeddings (made to agree or disagree with the labels), so the scoring logic is
checked without a pretrained model. Nothing is downloaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

pytest.importorskip("open_clip")

from pipelines.dataset import ImageDataset  # noqa: E402
from pipelines.errors import VetsetError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A local open_clip folder (open_clip_config.json + safetensors), random weights."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    out = tmp_path_factory.mktemp("tiny-clip")
    torch.manual_seed(0)
    model = CLIP(**TINY_CFG)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return out


def _planted(n_per_class=60, k=10, dim=48, noise=0.35, flip=0.1, seed=0, bias_class=None):
    """Class directions, image embeddings near their true class's direction, and given labels
    with ``flip`` of them moved to another class (the planted wrong labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    true = np.repeat(np.arange(k), n_per_class)
    emb = centres[true] + noise * rng.normal(size=(len(true), dim)) / np.sqrt(dim) * 3
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    given = true.copy()
    wrong = rng.random(len(true)) < flip
    given[wrong] = (true[wrong] + rng.integers(1, k, wrong.sum())) % k
    text = centres.copy()
    if bias_class is not None:  # one class name CLIP "likes": every image is a bit closer to it
        text[bias_class] += 0.35 * emb.mean(0)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
    return emb.astype(np.float32), text.astype(np.float32), true, given, wrong


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_shot_decision_finds_planted_wrong_labels_and_suggests_the_true_class(seed):
    from cleansers.clip.scoring import zero_shot_decision

    emb, text, true, given, wrong = _planted(seed=seed, bias_class=3)
    d = zero_shot_decision(emb, text, given, logit_scale=30.0)
    tpr, fpr = d.flag[wrong].mean(), d.flag[~wrong].mean()
    assert tpr >= 0.8 and fpr <= 0.02, (tpr, fpr)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(wrong, d.score) > 0.95
    hit = d.flag & wrong & (d.suggested >= 0)
    assert hit.sum() >= 0.7 * d.flag[wrong].sum() and (d.suggested[hit] == true[hit]).mean() >= 0.95
    assert not d.info["withheld"] and d.info["zero_shot_accuracy"] > 0.8
    # clean labels: next to nothing flagged
    clean = zero_shot_decision(emb, text, true, logit_scale=30.0)
    assert clean.flag.mean() <= 0.02


def test_calibration_takes_out_a_favoured_class_name():
    """Every image 8 logits closer to class 3 (a class name CLIP likes): before calibration
    class 3 swallows most rows; the fitted bias gives it back about -8 and the calibrated
    predictions recover the labels."""
    from cleansers.clip.scoring import _softmax, calibrate_to_labels

    emb, text, true, given, wrong = _planted(seed=5, flip=0.0)
    logits = 10.0 * emb @ text.T
    logits[:, 3] += 8.0
    probs, bias = calibrate_to_labels(logits, true, 10)
    assert (_softmax(logits).argmax(1) == 3).mean() > 0.5
    assert abs((bias[3] - np.delete(bias, 3).mean()) + 8.0) < 1.0
    assert (probs.argmax(1) == true).mean() > 0.95
    np.testing.assert_allclose(probs.mean(0), np.bincount(true) / len(true), atol=1e-3)


def test_zero_shot_withholds_when_clip_does_not_know_the_classes():
    from cleansers.clip.scoring import zero_shot_decision

    emb, text, true, given, wrong = _planted(seed=4)
    rng = np.random.default_rng(9)
    unknown = rng.normal(size=text.shape).astype(np.float32)  # names that mean nothing to the model
    d = zero_shot_decision(emb, unknown, given, logit_scale=30.0)
    assert d.info["withheld"] and not d.flag.any() and "withheld" in d.info["finding"]
    assert (d.suggested == -1).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_decision_finds_planted_wrong_labels_and_conflicting_duplicates(seed):
    from cleansers.clip.scoring import knn_decision

    emb, _, true, given, wrong = _planted(seed=seed)
    # three exact duplicates that carry a different label than their original
    emb = np.concatenate([emb, emb[[0, 100, 200]]])
    given = np.r_[given, (true[[0, 100, 200]] + 1) % 10]
    true = np.r_[true, true[[0, 100, 200]]]
    wrong = np.r_[wrong, [True, True, True]]
    d = knn_decision(emb, given, 10, k=10)
    tpr, fpr = d.flag[wrong].mean(), d.flag[~wrong].mean()
    # cleanlab's prune_by_noise_rate is conservative on neighbour votes: 0.76-0.96 measured over 4 seeds
    assert tpr >= 0.65 and fpr <= 0.01, (tpr, fpr)
    hit = d.flag & wrong & (d.suggested >= 0)
    assert (d.suggested[hit] == true[hit]).mean() >= 0.95
    assert d.info["conflicting_sets"] >= 3 and "near-duplicate sets carry different labels" in d.info["finding"]
    # no class structure in the embedding: withheld
    noise = np.random.default_rng(seed).normal(size=emb.shape).astype(np.float32)
    assert knn_decision(noise, given, 10, k=10).info["withheld"]


def _images(n: int, tmp_path: Path) -> ImageDataset:
    """``n`` class-balanced real CIFAR-10 rows, through the Parquet loader."""
    from conftest import cifar_slice
    from pipelines.loaders import load_dataset

    pq.write_table(cifar_slice(n), tmp_path / f"cifar-{n}.parquet")
    return load_dataset(tmp_path / f"cifar-{n}.parquet")


def test_detectors_through_run_audit_on_planted_cache_then_the_real_tiny_model(tiny_clip, tmp_path, cifar_dir):
    """Image embeddings planted in the embedding cache (aligned with the tiny model's own class
    text embeddings, 10% of the labels moved): clip and clip_knn find the moved rows through
    run_audit, read every embedding from the cache and write suggested labels; then the same
    audit with the tiny random model embedding for real withholds its flags and says why."""
    from cleansers.audit import run_audit
    from cleansers.clip.embed import EmbeddingCache, embed_classes, image_hashes, resolve_prompts
    from cleansers.clip.model import load_clip
    from pipelines.outputs import RunPaths

    ds = _images(300, tmp_path)
    clip = load_clip(str(tiny_clip), device="cpu")
    text = embed_classes(clip, ds.class_names, resolve_prompts(None))
    rng = np.random.default_rng(0)
    true = ds.labels.copy()
    # random text towers give near-parallel class embeddings (cosine ~0.93): plant each image
    # along what sets its class's text embedding apart from the others
    apart = text - text.mean(0)
    apart /= np.linalg.norm(apart, axis=1, keepdims=True)
    emb = apart[true] + 0.3 * rng.normal(size=(len(true), text.shape[1])) / np.sqrt(text.shape[1])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    wrong = rng.random(len(true)) < 0.1
    given = true.copy()
    given[wrong] = (true[wrong] + rng.integers(1, 10, wrong.sum())) % 10
    dirty = ImageDataset(ds.images, given, ds.class_names, ds.sample_ids)
    cache_dir = tmp_path / "cache"
    EmbeddingCache(str(cache_dir), clip.key).add(image_hashes(ds.images), emb)
    opts = {"model": str(tiny_clip), "cache_dir": str(cache_dir), "device": "cpu"}
    result = run_audit(dirty, ["clip", "clip_knn"], RunPaths(tmp_path / "run"), run_id="r",
                       options={"clip": opts, "clip_knn": dict(opts, k=8)})
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert len(scores) == len(ds)
    for name in ("clip", "clip_knn"):
        res = next(r for r in result.results if r.name == name)
        assert res.info["from_cache"] == len(ds) and res.info["embedded_now"] == 0
        flag = scores[f"{name}_flag"].to_numpy()
        assert flag[wrong].mean() >= 0.7 and flag[~wrong].mean() <= 0.03, (name, flag[wrong].mean(), flag[~wrong].mean())
    suggested = scores["suggested_label"].to_numpy()
    named = scores["flagged"].to_numpy() & wrong & (suggested >= 0)
    assert named.sum() > 10 and (suggested[named] == true[named]).mean() >= 0.9

    # confident learning's neighbour bar in CLIP's space ranks the moved rows better than in the
    # weak detection model's (2 epochs on 300 rows)
    from sklearn.metrics import roc_auc_score

    auroc = {}
    for space in ("model", "clip"):
        res = run_audit(dirty, ["clip", "confident"], RunPaths(tmp_path / f"conf-{space}"), run_id=space,
                        options={"clip": opts, "confident": {"epochs": 2, "features": space}})
        conf = next(r for r in res.results if r.name == "confident")
        assert conf.info["features"] == space
        auroc[space] = roc_auc_score(wrong, conf.score)
    assert auroc["clip"] > auroc["model"] + 0.1, auroc
    with pytest.raises(VetsetError, match="needs the clip or clip_knn detector earlier"):
        run_audit(dirty, ["confident"], RunPaths(tmp_path / "conf-alone"), run_id="alone",
                  options={"confident": {"epochs": 1, "features": "clip"}})

    # the real tiny model (random weights): it embeds every row, knows no class name, withholds
    again = run_audit(dirty, ["clip", "clip_knn"], RunPaths(tmp_path / "run2"), run_id="r2",
                      options={"clip": dict(opts, cache_dir=None), "clip_knn": dict(opts, cache_dir=None)})
    zero_shot = next(r for r in again.results if r.name == "clip")
    assert zero_shot.info["embedded_now"] == len(ds) and zero_shot.info["withheld"] and not zero_shot.flag.any()
    knn = next(r for r in again.results if r.name == "clip_knn")
    assert knn.info.get("shared_with_earlier_detector")  # one embedding pass for both detectors


def test_model_sources_that_are_not_on_disk_are_one_line_errors(tmp_path, tiny_clip):
    from cleansers.clip.model import load_clip

    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b"")
    cases = {"": "clip needs model=", str(tmp_path / "nope"): "not a folder or file",
             str(tmp_path / "empty"): "has no open_clip_config.json",
             str(tmp_path / "weights.safetensors"): "needs arch=NAME",
             "ViT-B-32:laion2b_s34b_b79k": "not in the local cache",
             "ViT-B-32:no_such_tag": "knows no pretrained tag",
             "hf-hub:nobody/no-such-clip": "not in the local cache"}
    for source, message in cases.items():
        with pytest.raises(VetsetError) as err:
            load_clip(source, device="cpu")
        assert message in str(err.value) and "\n" not in str(err.value), (source, err.value)


def test_cli_audit_with_clip_bad_model_is_one_line_and_the_flow_runs_it(tmp_path, cifar_dir, tiny_clip,
                                                                        prefect_server):
    from conftest import cifar_slice

    pq.write_table(cifar_slice(40), tmp_path / "data.parquet")
    bad = subprocess.run([sys.executable, "-m", "flows", "audit", "--data", str(tmp_path / "data.parquet"),
                          "--detectors", "agpd,clip", "--set", "clip.model=ViT-B-32:openai", "--device", "cpu",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "not in the local cache" in (bad.stderr + bad.stdout)
    # checked before any work (agpd, named first, never trained): no Prefect server started,
    # no flow run, nothing written
    assert "temporary server" not in bad.stderr + bad.stdout and "Flow run" not in bad.stderr + bad.stdout
    assert not (tmp_path / "bad").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "home"))  # the session's server
    ok = subprocess.run([sys.executable, "-m", "flows", "audit", "--data", str(tmp_path / "data.parquet"),
                         "--detectors", "clip,clip_knn", "--set", f"clip.model={tiny_clip}",
                         "--set", f"clip_knn.model={tiny_clip}", "--set", "clip_knn.k=5", "--device", "cpu",
                         "--out", str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=600,
                        env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    scores = pd.read_parquet(tmp_path / "run" / "scores.parquet")
    assert len(scores) == 40 and scores["clip_score"].between(0, 1).all() and scores["clip_knn_score"].notna().all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["detectors"]["clip"]["withheld"] is True  # random weights know no class name


def test_vdc_cascades_from_clip(tiny_clip, tmp_path, cifar_dir):
    """VDC asks the MLLM only about the rows CLIP finds most doubtful (cascade_from=clip)."""
    pytest.importorskip("transformers")
    from cleansers.audit import run_audit
    from pipelines.outputs import RunPaths
    from vdc_tiny import build_tiny_llava

    ds = _images(20, tmp_path)
    vlm = build_tiny_llava(tmp_path / "llava")
    opts = {"model": str(tiny_clip), "cache_dir": None, "device": "cpu"}
    vdc = {"model": str(vlm), "cache_dir": None, "judge": "none", "questions": str(tmp_path / "q.json"),
           "describe_max_new_tokens": 4, "device": "cpu", "cascade_from": "clip", "cascade_fraction": 0.25}
    result = run_audit(ds, ["clip", "vdc"], RunPaths(tmp_path / "run"), run_id="r", options={"clip": opts, "vdc": vdc})
    clip_res, vdc_res = result.results
    assert vdc_res.info["rows_asked"] == 5 and vdc_res.info["rows_skipped_by_cascade"] == 15
    asked = ~np.isnan(vdc_res.score)
    top = np.argsort(-clip_res.score, kind="stable")[:5]
    assert set(np.flatnonzero(asked)) == set(top)
