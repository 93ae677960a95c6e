"""The embedded default dataset: scikit-learn's bundled handwritten digits (1,797 real 8x8
images, 10 classes), upscaled to 32x32 RGB. ``vetset demo`` audits a dirty copy of it
(BadNets 10% to class 0 plus 5% symmetric label noise) so a real audit with real metrics runs
on a 2-core CPU in minutes with nothing to download."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .dataset import ImageDataset, LoadStats
from .errors import DataError

EMBEDDED = ("digits",)


def load_digits_rgb(size: int = 32) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = (bunch.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)  # (N, 8, 8), ink = bright
    images = np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BILINEAR)) for im in raw]
    )
    images = np.repeat(images[..., None], 3, axis=-1)
    ids = [f"digits/{i:04d}" for i in range(len(images))]
    names = [str(int(t)) for t in bunch.target_names]
    stats = LoadStats(n_rows=len(images), source="embedded:digits", source_format="embedded")
    return ImageDataset(images, bunch.target.astype(np.int64), names, np.asarray(ids, dtype=object), None, stats)


def load_embedded_clean(name: str) -> ImageDataset:
    if name not in EMBEDDED:
        raise DataError(f"unknown embedded dataset {name!r}; available: {', '.join(EMBEDDED)}")
    return load_digits_rgb()


def demo_spec():
    """The demo's dirt: BadNets on 10% of rows to class 0, plus 5% symmetric label noise."""
    from .simulate import SimulationSpec

    return SimulationSpec(attack="badnets", poison_rate=0.10, target=0, noise="symmetric", noise_rate=0.05, seed=0)


def write_demo_dataset(out_dir) -> dict:
    """Simulate the demo's dirt on the embedded digits and write data/truth/trigger files."""
    from .simulate import simulate, write_simulation

    return write_simulation(simulate(load_digits_rgb(), demo_spec()), out_dir)
