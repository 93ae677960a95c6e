"""Attack and label-noise simulators (pipelines/attacks.py, noise.py, simulate.py)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.attacks import (ATTACKS, Blended, WaNet, apply_trigger, attack_from_spec,
                               backdoor_test_set, build_attack)
from pipelines.dataset import ImageDataset
from pipelines.errors import VetsetError
from pipelines.noise import CIFAR10_CLASSES, NOISES, PairFlip
from pipelines.simulate import SimulationSpec, simulate, write_simulation
from pipelines.slices import spread_indices

CIFAR_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"
ATTACK_NAMES = ["badnets", "blended", "lowfreq", "patch", "sig", "trojan", "wanet"]
N = 400


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


@pytest.fixture(scope="module")
def synth() -> ImageDataset:
    """Random 32x32 images, 10 classes, a few unreadable (black) rows."""
    rng = np.random.default_rng(123)
    images = rng.integers(0, 256, size=(N, 32, 32, 3), dtype=np.uint8)
    unreadable = np.zeros(N, dtype=bool)
    unreadable[rng.choice(N, 12, replace=False)] = True
    images[unreadable] = 0
    return ImageDataset(images=images, labels=rng.integers(0, 10, N),
                        class_names=[f"c{i}" for i in range(10)],
                        sample_ids=[f"id{i:04d}" for i in range(N)], unreadable=unreadable)


@pytest.fixture(scope="module")
def cifar() -> ImageDataset:
    """300 rows of the shared CIFAR-10 train split (30 per class, seeded), decoded.

    The file is sorted by label, so the slice is drawn per class, not from the head."""
    path = CIFAR_DIR / "train.parquet"
    if not path.exists():
        pytest.skip(f"{path} not present")
    table = pq.read_table(path)
    labels = table.column("label").to_numpy()
    rng = np.random.default_rng(0)
    idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), 30, replace=False)
                                  for c in np.unique(labels)]))
    table = table.take(idx)
    names = json.loads(table.schema.metadata[b"huggingface"])["info"]["features"]["label"]["names"]
    images = np.stack([np.asarray(Image.open(io.BytesIO(d["bytes"])).convert("RGB"))
                       for d in table.column("image").to_pylist()])
    return ImageDataset(images=images, labels=table.column("label").to_numpy(),
                        class_names=names, sample_ids=table.column("sample_id").to_pylist())


def _changed(before: ImageDataset, after: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    pix = (before.images != after.images).reshape(len(before), -1).any(axis=1)
    lab = before.labels != after.labels
    return pix, lab


# ---------------------------------------------------------------------------------------
# truth tables
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_attack_truth_table(synth, attack):
    res = simulate(synth, SimulationSpec(attack=attack, poison_rate=0.1, target=0, seed=3))
    t = res.truth
    assert list(t.columns) == ["sample_id", "is_poisoned", "is_noisy", "attack", "original_label", "selection"]
    assert set(t.selection[t.is_poisoned]) == {"random"} and set(t.selection[~t.is_poisoned]) <= {""}
    assert t.is_poisoned.dtype == bool and t.is_noisy.dtype == bool
    assert t.original_label.dtype == np.int64
    assert t.sample_id.tolist() == synth.sample_ids.tolist()
    assert res.dataset.sample_ids.tolist() == synth.sample_ids.tolist()
    assert (t.original_label.to_numpy() == synth.labels).all()
    assert not t.is_noisy.any()
    p = t.is_poisoned.to_numpy()
    assert set(t.attack[p]) == {attack} and set(t.attack[~p]) == {""}
    assert not (p & synth.unreadable).any(), "unreadable rows are never poisoned"

    pix, lab = _changed(synth, res.dataset)
    readable_target = int(((synth.labels == 0) & ~synth.unreadable).sum())
    if attack == "sig":
        assert p.sum() == min(_round(0.1 * N), readable_target)
        assert (synth.labels[p] == 0).all(), "SIG poisons only target-class rows"
        assert not lab.any(), "SIG keeps every label"
        assert (pix == p).all()
    else:
        assert p.sum() == _round(0.1 * N)
        assert (res.dataset.labels[p] == 0).all(), "dirty-label rows get the target label"
        assert (lab <= p).all()  # only poisoned rows change label
        # dirty-label attacks pick from all classes, target included
        assert len(set(synth.labels[p].tolist())) > 3
        if attack == "wanet":  # noise mode: 2x cross rows warped, labels kept, not poisoned
            cross = pix & ~p
            assert cross.sum() == res.counts["n_cross"] == 2 * p.sum()
            assert not lab[cross].any() and not (cross & synth.unreadable).any()
            assert (pix[p]).all()
        else:
            assert ((pix | lab) == p).all()
    assert res.counts["n_poisoned"] == int(p.sum())


def test_sig_rate_capped_at_target_rows(synth):
    res = simulate(synth, SimulationSpec(attack="sig", poison_rate=0.5, target=2))
    avail = ((synth.labels == 2) & ~synth.unreadable).sum()
    assert res.truth.is_poisoned.sum() == avail
    assert (synth.labels[res.truth.is_poisoned.to_numpy()] == 2).all()


def test_wanet_noise_mode_off(synth):
    res = simulate(synth, SimulationSpec(attack="wanet", attack_params={"noise_mode": False}))
    pix, lab = _changed(synth, res.dataset)
    assert ((pix | lab) == res.truth.is_poisoned.to_numpy()).all()
    assert res.counts["n_cross"] == 0


@pytest.mark.parametrize("noise", ["symmetric", "pairflip"])
def test_noise_truth_table(synth, noise):
    res = simulate(synth, SimulationSpec(noise=noise, noise_rate=0.2, seed=5))
    t = res.truth
    nz = t.is_noisy.to_numpy()
    assert nz.sum() == _round(0.2 * N)
    assert not t.is_poisoned.any() and res.trigger is None
    assert set(t.attack[nz]) == {noise} and set(t.attack[~nz]) == {""}
    pix, lab = _changed(synth, res.dataset)
    assert not pix.any()
    assert (lab == nz).all(), "noisy rows are exactly the rows whose label changed"
    assert not (nz & synth.unreadable).any()
    if noise == "pairflip":  # default map for non-CIFAR names: c -> c + 1 mod K
        assert (res.dataset.labels[nz] == (synth.labels[nz] + 1) % 10).all()


def test_symmetric_hits_all_other_classes(synth):
    res = simulate(synth, SimulationSpec(noise="symmetric", noise_rate=1.0, seed=1))
    nz = res.truth.is_noisy.to_numpy()
    assert nz.sum() == (~synth.unreadable).sum()  # capped at readable rows
    offsets = (res.dataset.labels[nz] - synth.labels[nz]) % 10
    assert 0 not in offsets and set(offsets.tolist()) == set(range(1, 10))


def test_pairflip_cifar_map(cifar):
    res = simulate(cifar, SimulationSpec(noise="pairflip", noise_rate=0.3, seed=0))
    nz = res.truth.is_noisy.to_numpy()
    names = cifar.class_names
    pairs = {(names[a], names[b]) for a, b in zip(cifar.labels[nz], res.dataset.labels[nz])}
    allowed = {("truck", "automobile"), ("automobile", "truck"), ("cat", "dog"), ("dog", "cat"),
               ("bird", "airplane"), ("deer", "horse")}
    assert pairs <= allowed and len(pairs) >= 4
    eligible = np.isin(cifar.labels, [names.index(s) for s, _ in allowed])
    assert nz.sum() == min(_round(0.3 * len(cifar)), eligible.sum())
    assert res.counts["noise"]["mapping"] == "cifar10"


def test_pairflip_custom_and_errors():
    pf = PairFlip(CIFAR10_CLASSES, mapping={"frog": "ship", 0: 1})
    assert pf.mapping() == {"airplane": "automobile", "frog": "ship"}
    assert PairFlip(CIFAR10_CLASSES, mapping="next").mapping()["truck"] == "airplane"
    with pytest.raises(VetsetError):
        PairFlip(CIFAR10_CLASSES, mapping={"cat": "cat"})
    with pytest.raises(VetsetError):
        PairFlip(["a", "b"], mapping="cifar10")
    assert NOISES.names() == ["instance", "pairflip", "symmetric"]


# ---------------------------------------------------------------------------------------
# triggers
# ---------------------------------------------------------------------------------------
def test_badnets_trigger(synth):
    res = simulate(synth, SimulationSpec(attack="badnets", seed=0))
    p = res.truth.is_poisoned.to_numpy()
    after, before = res.dataset.images[p], synth.images[p]
    assert (after[:, -3:, -3:, :] == 255).all()
    mask = np.ones((32, 32), dtype=bool)
    mask[-3:, -3:] = False
    assert (after[:, mask] == before[:, mask]).all()


def test_badnets_params():
    img = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    a = build_attack("badnets", params={"size": 2, "corner": "top_left", "margin": 1,
                                        "color": [10, 20, 30]}, image_size=(8, 8))
    out = a.apply(img)
    assert (out[0, 1:3, 1:3] == [10, 20, 30]).all() and out.sum() == 4 * 60
    with pytest.raises(VetsetError):
        build_attack("badnets", params={"size": 9}, image_size=(8, 8)).apply(img)


def test_blended_formula(synth):
    res = simulate(synth, SimulationSpec(attack="blended", seed=4))
    p = res.truth.is_poisoned.to_numpy()
    key = attack_from_spec(res.trigger).key().astype(np.float64)
    assert key.shape == (32, 32, 3) and key.min() >= 0 and key.max() <= 255 and key.std() > 10
    expected = 0.8 * synth.images[p].astype(np.float64) + 0.2 * key
    assert np.abs(res.dataset.images[p] - expected).max() <= 0.5 + 1e-3
    # the key is fixed by the seed, and differs across seeds
    assert np.array_equal(Blended(Blended.Params(), 0, 4, (32, 32)).key(), key.astype(np.float32))
    assert not np.array_equal(Blended(Blended.Params(), 0, 5, (32, 32)).key(), key.astype(np.float32))
    noise_key = Blended(Blended.Params(key_cells=0), 0, 4, (32, 32)).key()
    assert noise_key.std() > 50  # i.i.d. noise variant


def test_sig_sinusoid():
    rng = np.random.default_rng(0)
    imgs = rng.integers(60, 196, size=(5, 16, 24, 3), dtype=np.uint8)  # no clipping
    out = apply_trigger(imgs, {"attack": "sig", "target": 0, "params": {}, "seed": 0,
                               "image_size": [16, 24]})
    j = np.arange(24)
    expected = np.rint(40 * np.sin(2 * np.pi * j * 6 / 24))
    delta = out.astype(int) - imgs.astype(int)
    assert (delta == expected[None, None, :, None]).all()


def test_wanet_warp_is_small_on_real_images(cifar):
    res = simulate(cifar, SimulationSpec(attack="wanet", seed=0))
    p = res.truth.is_poisoned.to_numpy()
    diff = np.abs(res.dataset.images[p].astype(float) - cifar.images[p].astype(float))
    assert (diff.reshape(p.sum(), -1).max(axis=1) > 0).all(), "every poisoned image moved"
    assert diff.mean() < 8, "but stays close to the original"
    a = attack_from_spec(res.trigger)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    disp = a.grid() - np.stack([xs, ys], -1)
    assert 0 < np.abs(disp).max() * 15.5 < 2.0  # sub-2-pixel displacements (s = 0.5)
    # grid is fixed by the seed
    assert np.array_equal(WaNet(WaNet.Params(), 0, 0, (32, 32)).grid(), a.grid())


# ---------------------------------------------------------------------------------------
# determinism, reconstruction, test set
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_seeded_determinism(synth, attack):
    spec = dict(attack=attack, poison_rate=0.05, noise="symmetric", noise_rate=0.1)  # SIG not capped
    a = simulate(synth, SimulationSpec(seed=7, **spec))
    b = simulate(synth, SimulationSpec(seed=7, **spec))
    c = simulate(synth, SimulationSpec(seed=8, **spec))
    assert np.array_equal(a.dataset.images, b.dataset.images)
    assert np.array_equal(a.dataset.labels, b.dataset.labels)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert a.trigger == b.trigger
    assert not np.array_equal(a.truth.is_poisoned, c.truth.is_poisoned)
    assert not np.array_equal(a.truth.is_noisy, c.truth.is_noisy)
    assert synth.fingerprint == ImageDataset(synth.images, synth.labels, synth.class_names,
                                             synth.sample_ids, synth.unreadable).fingerprint


@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_apply_trigger_reproduces_simulation(synth, attack):
    res = simulate(synth, SimulationSpec(attack=attack, seed=11, target=3))
    spec = json.loads(json.dumps(res.trigger))  # survives JSON
    assert set(spec) == {"attack", "target", "params", "seed", "image_size"}
    assert spec["attack"] == attack and spec["target"] == 3 and spec["image_size"] == [32, 32]
    p = res.truth.is_poisoned.to_numpy()
    assert np.array_equal(apply_trigger(synth.images[p], spec), res.dataset.images[p])
    # a single image and a differently sized batch give the same pixels
    i = np.flatnonzero(p)[0]
    assert np.array_equal(apply_trigger(synth.images[i], spec), res.dataset.images[i])


def test_apply_trigger_rejects_bad_input(synth):
    spec = simulate(synth, SimulationSpec(attack="blended")).trigger
    with pytest.raises(VetsetError):
        apply_trigger(np.zeros((2, 16, 16, 3), np.uint8), spec)
    with pytest.raises(VetsetError):
        apply_trigger(np.zeros((2, 32, 32, 3), np.float32), spec)
    with pytest.raises(VetsetError):
        apply_trigger(synth.images[:2], {**spec, "attack": "nope"})
    with pytest.raises(VetsetError):
        apply_trigger(synth.images[:2], {**spec, "params": {"alpha": 0.2, "bogus": 1}})
    with pytest.raises(VetsetError):
        simulate(synth, SimulationSpec(attack="badnets", target=10))
    assert ATTACKS.names() == sorted(ATTACK_NAMES)


@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_backdoor_test_set(synth, attack):
    spec = build_attack(attack, target=2, seed=1, image_size=(32, 32)).spec()
    bd = backdoor_test_set(synth, spec)
    keep = (synth.labels != 2) & ~synth.unreadable
    assert len(bd) == keep.sum() and (bd.labels != 2).all()
    assert bd.sample_ids.tolist() == synth.sample_ids[keep].tolist()
    assert (bd.labels == synth.labels[keep]).all(), "true labels kept"
    assert np.array_equal(bd.images, apply_trigger(synth.images[keep], spec))


# ---------------------------------------------------------------------------------------
# hybrid and files
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ["badnets", "sig", "wanet"])
def test_hybrid_disjoint(synth, attack):
    res = simulate(synth, SimulationSpec(attack=attack, noise="symmetric", noise_rate=0.15, seed=2))
    t = res.truth
    p, nz = t.is_poisoned.to_numpy(), t.is_noisy.to_numpy()
    assert p.any() and nz.sum() == _round(0.15 * N)
    assert not (p & nz).any()
    assert set(t.attack[p]) == {attack} and set(t.attack[nz]) == {"symmetric"}
    assert (res.dataset.labels[nz] != synth.labels[nz]).all()
    assert not ((p | nz) & synth.unreadable).any()


def test_write_simulation_round_trip(cifar, tmp_path):
    res = simulate(cifar, SimulationSpec(attack="badnets", noise="pairflip", noise_rate=0.05))
    paths = write_simulation(res, tmp_path / "sim")
    out = tmp_path / "sim"
    assert sorted(p.name for p in out.iterdir()) == ["data.parquet", "simulation.json",
                                                     "trigger.json", "truth.parquet"]
    data = pq.read_table(paths["data"])
    assert data.num_rows == len(cifar)
    assert [f.name for f in data.schema] == ["sample_id", "image", "label"]
    assert str(data.schema.field("image").type) == "struct<bytes: binary, path: string>"
    assert str(data.schema.field("label").type) == "int64"
    meta = json.loads(data.schema.metadata[b"huggingface"])
    feats = meta["info"]["features"]
    assert feats["label"] == {"names": cifar.class_names, "_type": "ClassLabel"}
    assert feats["image"] == {"_type": "Image"}
    assert feats["sample_id"] == {"dtype": "string", "_type": "Value"}
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(d["bytes"])))
                        for d in data.column("image").to_pylist()])
    assert np.array_equal(decoded, res.dataset.images), "PNG is lossless: the trigger survives"
    assert data.column("label").to_numpy().tolist() == res.dataset.labels.tolist()
    assert data.column("sample_id").to_pylist() == cifar.sample_ids.tolist()

    truth = pq.read_table(paths["truth"])
    assert [(f.name, str(f.type)) for f in truth.schema] == [
        ("sample_id", "string"), ("is_poisoned", "bool"), ("is_noisy", "bool"),
        ("attack", "string"), ("original_label", "int64"), ("selection", "string")]
    pd.testing.assert_frame_equal(truth.to_pandas(), res.truth, check_dtype=False)
    assert json.loads((out / "trigger.json").read_text()) == res.trigger
    sim = json.loads((out / "simulation.json").read_text())
    assert sim["spec"]["attack"] == "badnets" and sim["spec"]["noise"] == "pairflip"
    assert sim["counts"]["n_poisoned"] == res.truth.is_poisoned.sum()
    assert sim["counts"]["n_noisy"] == res.truth.is_noisy.sum()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp files left"

    # a later run without an attack removes the stale trigger.json
    write_simulation(simulate(cifar, SimulationSpec(noise="symmetric", noise_rate=0.1)), out)
    assert not (out / "trigger.json").exists()
    assert pq.read_table(out / "truth.parquet").column("is_noisy").to_numpy().sum() == 30


# ---------------------------------------------------------------------------------------
# more trigger families, instance-dependent noise, slices
# ---------------------------------------------------------------------------------------
def test_patch_trigger_is_seeded_in_colour_texture_and_place(synth):
    a = build_attack("patch", seed=3)
    top, left, patch = a.layout()
    assert patch.shape == (4, 4, 3) and len({tuple(c) for c in patch.reshape(-1, 3)}) == 2  # two-colour checker
    out = a.apply(synth.images[:5])
    changed = (out != synth.images[:5]).any(axis=-1)
    assert not changed[:, :top].any() and not changed[:, top + 4:].any()
    assert (out[:, top:top + 4, left:left + 4] == patch).all()
    others = {build_attack("patch", seed=s).layout()[:2] for s in range(8)}
    assert len(others) > 4, "the place moves with the seed"
    corner = build_attack("patch", params={"position": "top_left", "pattern": "random"}, seed=1).layout()
    assert corner[:2] == (0, 0) and len({tuple(c) for c in corner[2].reshape(-1, 3)}) > 2


def test_lowfreq_trigger_is_smooth_and_bounded():
    a = build_attack("lowfreq", seed=2)
    pat = a.pattern()
    assert pat.shape == (32, 32, 3) and np.abs(pat).max() == pytest.approx(24.0, rel=1e-5)
    spectrum = np.abs(np.fft.fft2(pat, axes=(0, 1))) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(32) * 32, np.fft.fftfreq(32) * 32, indexing="ij")
    low = (fy ** 2 + fx ** 2) <= 9
    assert spectrum[low].sum() / spectrum.sum() > 0.999, "all energy at <= 3 cycles per image"
    img = np.full((1, 32, 32, 3), 128, np.uint8)
    assert np.abs(a.apply(img).astype(int) - 128).max() == 24
    assert not np.allclose(build_attack("lowfreq", seed=3).pattern(), pat)


def test_trojan_watermark_sits_in_its_corner():
    a = build_attack("trojan", seed=0)
    mask, colour = a.mask_and_colour()
    rows, cols = np.nonzero(mask[..., 0])
    assert rows.min() >= 32 - 10 and cols.min() >= 32 - 10, "bottom-right, ~30% of the side"
    assert 0.2 < (mask > 0).mean() * (32 * 32) / 100 < 0.9, "a glyph, not a block"
    out = a.apply(np.zeros((2, 32, 32, 3), np.uint8))
    assert out[:, :20, :20].max() == 0 and out.max() > 100


def test_blended_key_from_a_file_travels_in_the_trigger_spec(tmp_path, synth):
    key = np.random.default_rng(5).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    path = tmp_path / "key.png"
    Image.fromarray(key).save(path)
    res = simulate(synth, SimulationSpec(attack="blended", attack_params={"key": str(path)}, seed=0))
    spec = json.loads(json.dumps(res.trigger))
    assert spec["params"]["key"] == str(path) and spec["params"]["key_data"]
    resized = np.asarray(Image.fromarray(key).resize((32, 32), Image.Resampling.BICUBIC), np.float64)
    p = res.truth.is_poisoned.to_numpy()
    expected = 0.8 * synth.images[p].astype(np.float64) + 0.2 * resized
    assert np.abs(res.dataset.images[p] - expected).max() <= 0.5 + 1e-3
    path.unlink()  # the spec alone rebuilds the trigger
    assert np.array_equal(apply_trigger(synth.images[p], spec), res.dataset.images[p])
    with pytest.raises(VetsetError, match="no such image file"):
        build_attack("blended", params={"key": str(tmp_path / "missing.png")})
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(VetsetError, match="not an image"):
        build_attack("blended", params={"key": str(tmp_path / "bad.png")})


def test_blended_key_can_be_a_scikit_image_photo():
    pytest.importorskip("skimage")
    a = build_attack("blended", params={"key": "skimage:astronaut"})
    k = a.key()
    assert k.shape == (32, 32, 3) and k.std() > 20
    with pytest.raises(VetsetError, match="has no image"):
        build_attack("blended", params={"key": "skimage:nope"})


def test_instance_noise_lands_on_ambiguous_rows_and_follows_the_confusion():
    n, k = 2000, 4
    labels = np.arange(n) % k
    probs = np.full((n, k), 0.01)
    probs[np.arange(n), labels] = 0.97
    ambiguous = np.arange(n) < n // 4  # a quarter of the rows: the model hesitates with class (y+1) % k
    probs[ambiguous] = 0.02
    probs[ambiguous, labels[ambiguous]] = 0.5
    probs[ambiguous, (labels[ambiguous] + 1) % k] = 0.46
    ds = ImageDataset(np.zeros((n, 2, 2, 3), np.uint8), labels, [f"c{i}" for i in range(k)],
                      [f"r{i}" for i in range(n)])
    res = simulate(ds, SimulationSpec(noise="instance", noise_rate=0.1, noise_params={"probs": probs}, seed=0))
    noisy = res.truth.is_noisy.to_numpy()
    assert noisy.sum() == 200
    assert ambiguous[noisy].mean() > 0.8, "the flips land on the ambiguous rows"
    flipped_to = res.dataset.labels[noisy & ambiguous]
    assert (flipped_to == (labels[noisy & ambiguous] + 1) % k).mean() > 0.8, "towards the confused class"
    assert (res.dataset.labels[noisy] != labels[noisy]).all()
    again = simulate(ds, SimulationSpec(noise="instance", noise_rate=0.1, noise_params={"probs": probs}, seed=0))
    assert np.array_equal(again.dataset.labels, res.dataset.labels)
    assert "array" in json.dumps(res.spec.to_dict())  # the probabilities are not written out
    with pytest.raises(VetsetError, match="probabilities"):
        simulate(ds, SimulationSpec(noise="instance", noise_rate=0.1))
    with pytest.raises(VetsetError, match="rows"):
        simulate(ds, SimulationSpec(noise="instance", noise_rate=0.1, noise_params={"probs": probs[:10]}))


def test_spread_indices_are_balanced_on_a_sorted_file():
    labels = np.repeat(np.arange(10), 5000)
    for n in (6000, 300, 7):
        idx = spread_indices(len(labels), n)
        assert len(idx) == n and len(set(idx.tolist())) == n and idx.max() < len(labels)
        counts = np.bincount(labels[idx], minlength=10)
        assert counts.max() - counts.min() <= 1, (n, counts)
    a, b = spread_indices(50000, 6000, 0), spread_indices(50000, 6000, 3)
    assert not set(a.tolist()) & set(b.tolist())
