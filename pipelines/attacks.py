"""Backdoor attack simulators: BadNets, a random patch, Blended (seeded or any key image),
SIG, WaNet, a low-frequency additive trigger and a Trojan-style watermark.

Defaults follow ``shared/specs/attacks.md``, which in turn follows BackdoorBench
(Wu et al., NeurIPS 2022 Datasets & Benchmarks; ``resource/`` and ``attack/*.py``):
all-to-one, target class 0, 10% poisoning.

Every attack is fully described by a JSON-able *spec*::

    {"attack": "badnets", "target": 0, "params": {...}, "seed": 0, "image_size": [H, W]}

``apply_trigger(images, spec)`` rebuilds the trigger from that spec alone and applies it to
uint8 (N, H, W, 3) images; the same function is what :func:`pipelines.simulate.simulate`
uses, so the pixels of a simulated poisoned row and of ``apply_trigger`` on its clean
original are identical. Labels are never touched here (label flipping is the simulator's
job). ``backdoor_test_set`` builds the usual ASR test set.

All arithmetic is done in float32 on the 0..255 scale and rounded back to uint8
(round-half-to-even, then clipped), so a trigger is exactly reproducible.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from .dataset import ImageDataset
from .errors import VetsetError
from .registry import Registry

ATTACKS: Registry[type["Attack"]] = Registry("attack")


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class Attack:
    """One attack with its parameters, target, seed and image size fixed.

    Subclasses set ``name``, ``Params`` (a dataclass of published defaults) and
    ``clean_label``, and implement :meth:`apply`. ``clean_label`` attacks poison only rows
    of the target class and keep labels; dirty-label attacks poison rows of any class and
    set their label to the target.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = object
    clean_label: ClassVar[bool] = False

    def __init__(self, params: Any, target: int, seed: int, image_size: tuple[int, int]):
        self.params = params
        self.target = int(target)
        self.seed = int(seed)
        self.image_size = (int(image_size[0]), int(image_size[1]))

    # -- trigger ---------------------------------------------------------------------
    def apply(self, images: np.ndarray) -> np.ndarray:
        """The trigger applied to uint8 (N, H, W, 3) images; returns a new array."""
        raise NotImplementedError

    # -- extra rows that are modified but not poisoned (WaNet noise mode) -------------
    def n_cross(self, n_poison: int) -> int:
        """How many clean rows get a label-keeping 'noise' modification."""
        return 0

    def apply_cross(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no cross/noise rows")

    # -- spec ------------------------------------------------------------------------
    def spec(self) -> dict:
        return {
            "attack": self.name,
            "target": self.target,
            "params": _jsonable(asdict(self.params)),
            "seed": self.seed,
            "image_size": list(self.image_size),
        }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def make_params(name: str, params: dict | None = None) -> Any:
    """The attack's params dataclass: defaults overridden by ``params`` (unknown keys fail)."""
    cls = ATTACKS.get(name)
    params = dict(params or {})
    known = {f.name for f in fields(cls.Params)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise VetsetError(f"unknown parameter(s) {unknown} for attack {name!r}; known: {sorted(known)}")
    return cls.Params(**params)


def build_attack(
    name: str, *, target: int = 0, params: dict | Any | None = None, seed: int = 0,
    image_size: tuple[int, int] | list[int] = (32, 32),
) -> Attack:
    cls = ATTACKS.get(name)
    if not isinstance(params, cls.Params):
        params = make_params(name, params)
    return cls(params, target, seed, tuple(image_size))


def attack_from_spec(spec: dict) -> Attack:
    """Rebuild an attack from its JSON spec dict (see the module docstring)."""
    missing = {"attack", "target", "params", "seed", "image_size"} - set(spec)
    if missing:
        raise VetsetError(f"trigger spec lacks {sorted(missing)}")
    size = spec["image_size"]
    if len(size) != 2:
        raise VetsetError(f"trigger spec image_size must be [H, W], got {size!r}")
    return build_attack(spec["attack"], target=spec["target"], params=spec["params"],
                        seed=spec["seed"], image_size=(int(size[0]), int(size[1])))


def apply_trigger(images_u8_NHWC: np.ndarray, spec: dict) -> np.ndarray:
    """Apply the trigger described by ``spec`` to uint8 (N, H, W, 3) images (labels untouched).

    A single image (H, W, 3) is accepted too. The images must have the spec's image size.
    """
    images = np.asarray(images_u8_NHWC)
    single = images.ndim == 3
    if single:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise VetsetError(f"images must be (N, H, W, 3), got {images.shape}")
    if images.dtype != np.uint8:
        raise VetsetError(f"images must be uint8, got {images.dtype}")
    attack = attack_from_spec(spec)
    if tuple(images.shape[1:3]) != attack.image_size:
        raise VetsetError(
            f"images are {images.shape[1]}x{images.shape[2]} but the trigger was made for "
            f"{attack.image_size[0]}x{attack.image_size[1]}")
    out = attack.apply(images) if len(images) else images.copy()
    return out[0] if single else out


def backdoor_test_set(test: ImageDataset, spec: dict) -> ImageDataset:
    """The backdoored test set: every readable non-target row with the trigger applied.

    Labels stay the TRUE labels, so ASR = mean(pred == spec["target"]) and robust accuracy
    RA = mean(pred == label). Sample ids are those of the test rows.
    """
    target = int(spec["target"])
    keep = np.flatnonzero((test.labels != target) & ~test.unreadable)
    sub = test.subset(keep)
    return sub.replace(images=apply_trigger(sub.images, spec))


# ----------------------------------------------------------------------------------------
# BadNets
# ----------------------------------------------------------------------------------------
@dataclass
class BadNetsParams:
    """BadNets (Gu et al. 2017) as in BackdoorBench's CIFAR-10 setting (attacks.md): a
    ``size`` x ``size`` patch of ``color`` in the ``corner`` (bottom_right by default),
    ``margin`` pixels from the edges."""

    size: int = 3
    color: tuple[int, int, int] = (255, 255, 255)
    corner: str = "bottom_right"  # bottom_right | bottom_left | top_right | top_left
    margin: int = 0

    def __post_init__(self) -> None:
        self.size = int(self.size)
        self.margin = int(self.margin)
        self.color = tuple(int(c) for c in self.color)
        if len(self.color) != 3 or not all(0 <= c <= 255 for c in self.color):
            raise VetsetError(f"badnets color must be 3 ints in 0..255, got {self.color}")
        if self.corner not in ("bottom_right", "bottom_left", "top_right", "top_left"):
            raise VetsetError(f"badnets corner {self.corner!r} is not one of the four corners")
        if self.size < 1 or self.margin < 0:
            raise VetsetError("badnets size must be >= 1 and margin >= 0")


@ATTACKS.register("badnets")
class BadNets(Attack):
    name = "badnets"
    Params = BadNetsParams
    clean_label = False

    def patch_slices(self) -> tuple[slice, slice]:
        p: BadNetsParams = self.params
        h, w = self.image_size
        if p.size + p.margin > min(h, w):
            raise VetsetError(f"badnets patch {p.size}+{p.margin} does not fit a {h}x{w} image")
        top = p.corner.startswith("top")
        left = p.corner.endswith("left")
        r0 = p.margin if top else h - p.margin - p.size
        c0 = p.margin if left else w - p.margin - p.size
        return slice(r0, r0 + p.size), slice(c0, c0 + p.size)

    def apply(self, images: np.ndarray) -> np.ndarray:
        out = images.copy()
        rows, cols = self.patch_slices()
        out[:, rows, cols, :] = np.asarray(self.params.color, dtype=np.uint8)
        return out


# ----------------------------------------------------------------------------------------
# Blended
# ----------------------------------------------------------------------------------------
@dataclass
class BlendedParams:
    """Blended (Chen et al. 2017): x' = (1 - alpha) x + alpha k, alpha = 0.2 (attacks.md,
    BackdoorBench ``blended`` default).

    BackdoorBench blends a fixed cartoon image (Hello Kitty); we ship no images, so the key
    ``k`` is a fixed *seeded* pattern: a ``key_cells`` x ``key_cells`` x 3 grid of uniform
    0..255 values (``np.random.default_rng([seed, 1])``) upsampled bilinearly to the image
    size, i.e. a smooth colourful blob image. ``key_cells = 0`` gives full-resolution
    i.i.d. uniform noise instead (Chen et al.'s random-noise key).

    ``key``: an image file to blend instead (any format PIL reads; e.g. BackdoorBench's
    cartoon), or ``"skimage:NAME"`` for a photo that ships with scikit-image
    (``skimage.data``: astronaut, chelsea, coffee, ...). It is resized to the image size
    (bicubic) and stored in the trigger spec as ``key_data`` (base64 PNG of the resized
    key), so ``apply_trigger`` rebuilds the trigger without the file.
    """

    alpha: float = 0.2
    key_cells: int = 4
    key: str | None = None
    key_data: str | None = None

    def __post_init__(self) -> None:
        self.alpha = float(self.alpha)
        self.key_cells = int(self.key_cells)
        if not 0.0 < self.alpha <= 1.0:
            raise VetsetError(f"blended alpha must be in (0, 1], got {self.alpha}")
        if self.key_cells < 0 or self.key_cells == 1:
            raise VetsetError("blended key_cells must be 0 (noise) or >= 2")


def _bilinear_resize(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of (a, b, C) to (h, w, C) with corners aligned."""
    a, b = grid.shape[:2]
    ys = np.linspace(0, a - 1, h)
    xs = np.linspace(0, b - 1, w)
    y0 = np.clip(np.floor(ys).astype(int), 0, a - 2)
    x0 = np.clip(np.floor(xs).astype(int), 0, b - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    g = grid.astype(np.float64)
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


@ATTACKS.register("blended")
class Blended(Attack):
    name = "blended"
    Params = BlendedParams
    clean_label = False

    def __init__(self, params: Any, target: int, seed: int, image_size: tuple[int, int]):
        super().__init__(params, target, seed, image_size)
        if self.params.key is not None and self.params.key_data is None:
            self.params.key_data = encode_key(load_key_image(self.params.key, self.image_size))

    def key(self) -> np.ndarray:
        """The key image k, float32 (H, W, 3) on the 0..255 scale."""
        h, w = self.image_size
        if self.params.key_data is not None:
            k = decode_key(self.params.key_data)
            if k.shape[:2] != (h, w):
                raise VetsetError(f"blended key_data is {k.shape[0]}x{k.shape[1]}, the images {h}x{w}")
            return k.astype(np.float32)
        rng = np.random.default_rng([self.seed, 1])
        cells = self.params.key_cells
        if cells == 0:
            return rng.integers(0, 256, size=(h, w, 3)).astype(np.float32)
        grid = rng.uniform(0, 255, size=(cells, cells, 3))
        return _bilinear_resize(grid, h, w).astype(np.float32)

    def apply(self, images: np.ndarray) -> np.ndarray:
        a = np.float32(self.params.alpha)
        x = images.astype(np.float32)
        return _to_u8((np.float32(1) - a) * x + a * self.key()[None])


def load_key_image(key: str, image_size: tuple[int, int]) -> np.ndarray:
    """A key image as uint8 (H, W, 3) at ``image_size``: a file path, or ``skimage:NAME``."""
    import io
    from pathlib import Path

    from PIL import Image

    if key.startswith("skimage:"):
        name = key.split(":", 1)[1]
        try:
            from skimage import data as skdata
        except ImportError:
            raise VetsetError(f"blended key {key!r} needs scikit-image (pip install scikit-image)") from None
        loader = getattr(skdata, name, None)
        if loader is None or not callable(loader):
            raise VetsetError(f"blended key {key!r}: skimage.data has no image {name!r}")
        arr = np.asarray(loader())
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        img = Image.fromarray(arr[..., :3].astype(np.uint8))
    else:
        path = Path(key)
        if not path.is_file():
            raise VetsetError(f"blended key {key}: no such image file")
        try:
            img = Image.open(io.BytesIO(path.read_bytes()))
            img.load()
        except Exception as exc:
            raise VetsetError(f"blended key {key}: not an image PIL can read ({str(exc).splitlines()[0]})") from None
    h, w = image_size
    return np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)


def encode_key(key: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(key, dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_key(data: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    try:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise VetsetError(f"blended key_data is not a base64 PNG ({str(exc).splitlines()[0]})") from None


# ----------------------------------------------------------------------------------------
# SIG
# ----------------------------------------------------------------------------------------
@dataclass
class SIGParams:
    """SIG (Barni et al. 2019), clean-label: add delta * sin(2 pi j f / W) along the columns
    j (a horizontal sinusoid, constant down each column, same on all channels); delta = 40
    (of 255), f = 6 (attacks.md, BackdoorBench ``sig`` defaults)."""

    delta: float = 40.0
    frequency: float = 6.0

    def __post_init__(self) -> None:
        self.delta = float(self.delta)
        self.frequency = float(self.frequency)


@ATTACKS.register("sig")
class SIG(Attack):
    name = "sig"
    Params = SIGParams
    clean_label = True

    def pattern(self) -> np.ndarray:
        """The additive signal, float32 (W,)."""
        w = self.image_size[1]
        j = np.arange(w, dtype=np.float64)
        return (self.params.delta * np.sin(2 * math.pi * j * self.params.frequency / w)).astype(np.float32)

    def apply(self, images: np.ndarray) -> np.ndarray:
        return _to_u8(images.astype(np.float32) + self.pattern()[None, None, :, None])


# ----------------------------------------------------------------------------------------
# WaNet
# ----------------------------------------------------------------------------------------
@dataclass
class WaNetParams:
    """WaNet (Nguyen & Tran, ICLR 2021) with BackdoorBench's defaults (attacks.md): a k = 4
    control grid of uniform(-1, 1) offsets normalised to mean |offset| 1, upsampled bicubic
    (align_corners) to the image size, scaled by s = 0.5 / H, added to the identity grid,
    times ``grid_rescale`` = 1, clamped to [-1, 1] and applied with bilinear grid_sample.

    Noise mode (default on, ``cross_ratio`` 2): 2x as many other rows are warped with the
    trigger grid plus a per-pixel uniform(-1, 1)/H random field and KEEP their labels; as in
    the paper they are not poisoned (they teach the model that other warps mean nothing).
    """

    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    noise_mode: bool = True
    cross_ratio: float = 2.0

    def __post_init__(self) -> None:
        self.k = int(self.k)
        self.s = float(self.s)
        self.grid_rescale = float(self.grid_rescale)
        self.noise_mode = bool(self.noise_mode)
        self.cross_ratio = float(self.cross_ratio)
        if self.k < 2:
            raise VetsetError("wanet k must be >= 2")
        if self.cross_ratio < 0:
            raise VetsetError("wanet cross_ratio must be >= 0")


@ATTACKS.register("wanet")
class WaNet(Attack):
    name = "wanet"
    Params = WaNetParams
    clean_label = False

    def grid(self) -> np.ndarray:
        """The trigger sampling grid, float32 (H, W, 2) in grid_sample's (x, y) order."""
        import torch
        import torch.nn.functional as F

        h, w = self.image_size
        p: WaNetParams = self.params
        rng = np.random.default_rng([self.seed, 2])
        ins = rng.uniform(-1.0, 1.0, size=(1, 2, p.k, p.k)).astype(np.float32)
        ins = ins / np.mean(np.abs(ins))
        with torch.no_grad():
            noise = F.interpolate(torch.from_numpy(ins), size=(h, w), mode="bicubic",
                                  align_corners=True)
        noise = noise[0].permute(1, 2, 0).numpy().astype(np.float32)  # (H, W, 2)
        ys = np.linspace(-1, 1, h, dtype=np.float32)
        xs = np.linspace(-1, 1, w, dtype=np.float32)
        identity = np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1)  # (H, W, 2): x, y
        # BackdoorBench divides by input_height; for non-square images x uses W and y uses H.
        scale = np.array([p.s / w, p.s / h], dtype=np.float32)
        grid = (identity + noise * scale) * np.float32(p.grid_rescale)
        return np.clip(grid, -1, 1).astype(np.float32)

    @staticmethod
    def _warp(images: np.ndarray, grid: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        out = np.empty_like(images)
        chunk = max(1, (1 << 26) // max(1, images[0].size))  # ~256 MB of float32 per chunk
        g = torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))
        with torch.no_grad():
            for i in range(0, len(images), chunk):
                x = torch.from_numpy(images[i:i + chunk]).permute(0, 3, 1, 2).float()
                gi = g[i:i + chunk] if g.ndim == 4 else g[None].expand(len(x), -1, -1, -1)
                y = F.grid_sample(x, gi, mode="bilinear", padding_mode="zeros", align_corners=True)
                out[i:i + chunk] = _to_u8(y.permute(0, 2, 3, 1).numpy())
        return out

    def apply(self, images: np.ndarray) -> np.ndarray:
        return self._warp(images, self.grid())

    def n_cross(self, n_poison: int) -> int:
        if not self.params.noise_mode:
            return 0
        return int(math.floor(n_poison * self.params.cross_ratio + 0.5))

    def apply_cross(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = self.image_size
        ins = rng.uniform(-1.0, 1.0, size=(len(images), h, w, 2)).astype(np.float32)
        grids = np.clip(self.grid()[None] + ins / np.float32(h), -1, 1).astype(np.float32)
        return self._warp(images, grids)


# ----------------------------------------------------------------------------------------
# A random patch (BadNets' family, somewhere else and in other colours)
# ----------------------------------------------------------------------------------------
@dataclass
class PatchParams:
    """A ``size`` x ``size`` patch stamped onto every poisoned image. ``pattern``: "checker"
    (two seeded colours in a checkerboard, a classic BadNets variant), "random" (seeded
    i.i.d. pixel colours) or "solid" (one seeded colour). ``position``: "random" (a seeded
    top-left corner anywhere in the image) or one of the four corners. Everything comes from
    the seed (``np.random.default_rng([seed, 3])``), so hidden cases differ from BadNets'
    fixed white corner square in colour, texture and place."""

    size: int = 4
    pattern: str = "checker"
    position: str = "random"

    def __post_init__(self) -> None:
        self.size = int(self.size)
        if self.size < 1:
            raise VetsetError("patch size must be >= 1")
        if self.pattern not in ("checker", "random", "solid"):
            raise VetsetError(f"patch pattern {self.pattern!r} is not checker, random or solid")
        if self.position not in ("random", "bottom_right", "bottom_left", "top_right", "top_left"):
            raise VetsetError(f"patch position {self.position!r} is not random or a corner")


@ATTACKS.register("patch")
class Patch(Attack):
    name = "patch"
    Params = PatchParams
    clean_label = False

    def layout(self) -> tuple[int, int, np.ndarray]:
        """(top, left, the uint8 (size, size, 3) patch)."""
        p: PatchParams = self.params
        h, w = self.image_size
        if p.size > min(h, w):
            raise VetsetError(f"patch of {p.size} px does not fit a {h}x{w} image")
        rng = np.random.default_rng([self.seed, 3])
        colours = rng.integers(0, 256, size=(2, 3))
        while np.abs(colours[0] - colours[1]).sum() < 200:  # two colours that differ clearly
            colours = rng.integers(0, 256, size=(2, 3))
        if p.pattern == "checker":
            yy, xx = np.mgrid[:p.size, :p.size]
            patch = colours[(yy + xx) % 2]
        elif p.pattern == "random":
            patch = rng.integers(0, 256, size=(p.size, p.size, 3))
        else:
            patch = np.broadcast_to(colours[0], (p.size, p.size, 3))
        if p.position == "random":
            top, left = int(rng.integers(0, h - p.size + 1)), int(rng.integers(0, w - p.size + 1))
        else:
            top = 0 if p.position.startswith("top") else h - p.size
            left = 0 if p.position.endswith("left") else w - p.size
        return top, left, np.asarray(patch, dtype=np.uint8)

    def apply(self, images: np.ndarray) -> np.ndarray:
        top, left, patch = self.layout()
        out = images.copy()
        out[:, top:top + patch.shape[0], left:left + patch.shape[1], :] = patch
        return out


# ----------------------------------------------------------------------------------------
# Low-frequency additive trigger
# ----------------------------------------------------------------------------------------
@dataclass
class LowFreqParams:
    """A smooth, image-wide additive trigger (after the low-frequency attack of Zeng et al.,
    "Rethinking the backdoor attacks' triggers: a frequency perspective", ICCV 2021, whose
    trigger is a universal perturbation low-pass filtered so that no high-frequency artefact
    gives it away). Ours is seeded rather than optimised: random Gaussian coefficients on the
    2-D Fourier frequencies up to ``cutoff`` cycles per image (per channel; the DC term left
    out), inverse-transformed and scaled to an L-inf norm of ``amplitude`` (of 255), then
    added and clipped."""

    amplitude: float = 24.0
    cutoff: int = 3

    def __post_init__(self) -> None:
        self.amplitude = float(self.amplitude)
        self.cutoff = int(self.cutoff)
        if self.amplitude <= 0 or self.cutoff < 1:
            raise VetsetError("lowfreq amplitude must be > 0 and cutoff >= 1")


@ATTACKS.register("lowfreq")
class LowFreq(Attack):
    name = "lowfreq"
    Params = LowFreqParams
    clean_label = False

    def pattern(self) -> np.ndarray:
        """The additive signal, float32 (H, W, 3) with max |value| = amplitude."""
        h, w = self.image_size
        p: LowFreqParams = self.params
        rng = np.random.default_rng([self.seed, 4])
        spec = np.zeros((3, h, w), dtype=np.complex128)
        for fy in range(-p.cutoff, p.cutoff + 1):
            for fx in range(-p.cutoff, p.cutoff + 1):
                if (fy, fx) != (0, 0) and fy * fy + fx * fx <= p.cutoff * p.cutoff:
                    spec[:, fy % h, fx % w] = rng.normal(size=3) + 1j * rng.normal(size=3)
        field = np.fft.ifft2(spec, axes=(1, 2)).real  # a real field (the Hermitian half is implied)
        field = field / max(np.abs(field).max(), 1e-12) * p.amplitude
        return np.transpose(field, (1, 2, 0)).astype(np.float32)

    def apply(self, images: np.ndarray) -> np.ndarray:
        return _to_u8(images.astype(np.float32) + self.pattern()[None])


# ----------------------------------------------------------------------------------------
# Trojan-style watermark
# ----------------------------------------------------------------------------------------
@dataclass
class TrojanParams:
    """A watermark in the style of TrojanNN (Liu et al., NDSS 2018), whose trigger is a logo
    stamped on a corner: a seeded binary glyph (``cells`` x ``cells`` blocks, about half of
    them on) covering ``size`` (a fraction of the shorter side) in the ``corner``, its "on"
    pixels blended towards a seeded bright colour with ``alpha``. Larger and fainter than a
    BadNets square, and shaped like a mark rather than a block."""

    size: float = 0.3
    cells: int = 5
    alpha: float = 0.7
    corner: str = "bottom_right"

    def __post_init__(self) -> None:
        self.size = float(self.size)
        self.cells = int(self.cells)
        self.alpha = float(self.alpha)
        if not 0 < self.size <= 1 or self.cells < 2 or not 0 < self.alpha <= 1:
            raise VetsetError("trojan size must be in (0, 1], cells >= 2, alpha in (0, 1]")
        if self.corner not in ("bottom_right", "bottom_left", "top_right", "top_left"):
            raise VetsetError(f"trojan corner {self.corner!r} is not one of the four corners")


@ATTACKS.register("trojan")
class Trojan(Attack):
    name = "trojan"
    Params = TrojanParams
    clean_label = False

    def mask_and_colour(self) -> tuple[np.ndarray, np.ndarray]:
        """(float32 (H, W, 1) mask of the glyph's pixels times alpha, float32 (3,) colour)."""
        h, w = self.image_size
        p: TrojanParams = self.params
        rng = np.random.default_rng([self.seed, 5])
        glyph = rng.random((p.cells, p.cells)) < 0.5
        glyph[rng.integers(0, p.cells), :] = True  # a stroke across, so it reads as a mark
        side = max(p.cells, int(round(p.size * min(h, w))))
        block = np.kron(glyph, np.ones((side // p.cells + 1, side // p.cells + 1)))[:side, :side]
        top = 0 if p.corner.startswith("top") else h - side
        left = 0 if p.corner.endswith("left") else w - side
        mask = np.zeros((h, w, 1), dtype=np.float32)
        mask[top:top + side, left:left + side, 0] = block * p.alpha
        colour = rng.uniform(160, 255, size=3).astype(np.float32)
        return mask, colour

    def apply(self, images: np.ndarray) -> np.ndarray:
        mask, colour = self.mask_and_colour()
        x = images.astype(np.float32)
        return _to_u8(x * (1 - mask[None]) + colour[None, None, None, :] * mask[None])
