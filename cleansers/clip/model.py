"""Loading an open_clip model from what is already on disk: vetset never downloads weights.

``model`` may be:

- a local folder holding ``open_clip_config.json`` (``{"model_cfg": ..., "preprocess_cfg": ...}``,
  the layout open_clip and the Hugging Face hub use) and its weights
  (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``, ...);
- a weights file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``) with ``arch`` = an open_clip
  model name (``ViT-B-32``);
- ``NAME:TAG``, an open_clip pretrained tag (``ViT-B-32:laion2b_s34b_b79k``) whose file is
  already in the local cache (the Hugging Face cache, or ``~/.cache/clip`` for URL tags);
- ``hf-hub:ORG/REPO``, an open_clip repository already in the Hugging Face cache.

Anything else is a one-line :class:`VetsetError` saying what was looked for. The Hugging Face
hub is put offline while loading, so a tokenizer or config cannot be fetched either.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.errors import VetsetError
from trainers.accel import is_cuda

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
CONFIG_FILE = "open_clip_config.json"


@dataclass
class ClipModel:
    """A loaded open_clip model with what embedding needs."""

    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    key: str  # identifies the weights and config (the embedding cache's model key)
    source: str  # what was loaded, for the findings

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp().cpu().reshape(-1)[0])


@contextlib.contextmanager
def _offline():
    """The Hugging Face hub offline (no config, tokenizer or weights fetched) while loading."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hub_constants

        was = hub_constants.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = True
    except (ImportError, AttributeError):
        hub_constants, was = None, None
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = was


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _weights_in(folder: Path) -> Path | None:
    from open_clip.factory import _find_checkpoint_in_dir

    found = _find_checkpoint_in_dir(folder)
    return Path(found) if found else None


def _cached_tag_file(name: str, tag: str) -> tuple[Path | None, list[str]]:
    """The cached weights of an open_clip pretrained tag (None if absent) and where it looked."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        raise VetsetError(f"clip model {name}:{tag}: open_clip knows no pretrained tag {tag!r} for {name!r}")
    looked: list[str] = []
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        parts = cfg["hf_hub"].strip("/").split("/")
        repo = "/".join(parts[:2])
        names = [parts[2]] if len(parts) > 2 else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for filename in names:
            looked.append(f"hf-hub {repo}/{filename}")
            hit = try_to_load_from_cache(repo, filename)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit), looked
    if cfg.get("url"):
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        looked.append(str(path))
        if path.is_file():
            return path, looked
    return None, looked


def _cached_hub_folder(repo: str) -> tuple[Path | None, list[str]]:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, CONFIG_FILE)
    looked = [f"hf-hub {repo}/{CONFIG_FILE} in the Hugging Face cache"]
    if isinstance(hit, str) and os.path.isfile(hit):
        folder = Path(hit).parent
        if _weights_in(folder) is not None:
            return folder, looked
        looked.append(f"weights beside {hit}")
    return None, looked


def resolve_source(model: str, arch: str | None = None) -> tuple[str, Path, Path | None]:
    """(open_clip model name, weights file, config file or None) for ``model``; a one-line
    error naming what was looked for when nothing local matches."""
    if not model:
        raise VetsetError("clip needs model=... (a local open_clip folder, a weights file with arch=NAME, a cached "
                          "NAME:TAG or hf-hub:ORG/REPO); vetset never downloads weights")
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        config = path / CONFIG_FILE
        if not config.is_file():
            raise VetsetError(f"clip model {model}: the folder has no {CONFIG_FILE}")
        weights = _weights_in(path)
        if weights is None:
            raise VetsetError(f"clip model {model}: no weights (*.safetensors, *.bin, *.pth) beside {CONFIG_FILE}")
        return f"local-dir:{path}", weights, config
    if path.is_file() or path.suffix in WEIGHT_SUFFIXES:
        if not path.is_file():
            raise VetsetError(f"clip model {model}: no such file")
        if not arch:
            raise VetsetError(f"clip model {model}: a bare weights file needs arch=NAME (an open_clip model name)")
        return arch, path, None
    if model.startswith("hf-hub:"):
        folder, looked = _cached_hub_folder(model[len("hf-hub:"):])
        if folder is None:
            raise VetsetError(f"clip model {model}: not in the local cache (looked for {'; '.join(looked)}); "
                              "vetset never downloads weights")
        return f"local-dir:{folder}", _weights_in(folder), folder / CONFIG_FILE
    if ":" in model:
        name, tag = model.split(":", 1)
        from open_clip import list_models

        if name not in list_models():
            raise VetsetError(f"clip model {model}: {name!r} is not an open_clip model name")
        weights, looked = _cached_tag_file(name, tag)
        if weights is None:
            raise VetsetError(f"clip model {model}: the tag's weights are not in the local cache (looked for "
                              f"{'; '.join(looked)}); vetset never downloads weights")
        return name, weights, None
    raise VetsetError(f"clip model {model!r}: not a folder or file here, not NAME:TAG, not hf-hub:ORG/REPO")


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if is_cuda(device) else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise VetsetError(f"clip dtype {dtype!r}: use auto, fp32, bf16 or fp16")
    return table[dtype]


def check_model_options(model: str, *, arch: str | None = None, dtype: str = "auto") -> None:
    """Before any work: ``model``'s files are on disk (nothing is loaded) and ``dtype`` is one
    vetset knows; a one-line VetsetError otherwise."""
    resolve_source(model, arch)
    _pick_dtype(dtype, torch.device("cpu"))


def load_clip(model: str, *, arch: str | None = None, device: str | torch.device = "cpu",
              dtype: str = "auto") -> ClipModel:
    """Load ``model`` (see the module docstring) on ``device``, in eval mode."""
    try:
        import open_clip
    except ImportError:
        raise VetsetError("the clip detectors need open_clip: pip install 'vetset[clip]' "
                          "(open_clip_torch)") from None
    from open_clip.model import get_model_preprocess_cfg

    name, weights, config = resolve_source(model, arch)
    dev = torch.device(device)
    with _offline():
        try:
            if name.startswith("local-dir:"):
                net = open_clip.create_model(name, device="cpu")
            else:
                net = open_clip.create_model(name, pretrained=str(weights), device="cpu")
            tokenizer = open_clip.get_tokenizer(name)
        except VetsetError:
            raise
        except Exception as exc:  # noqa: BLE001  (open_clip raises many kinds; one line for the user)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VetsetError(f"clip model {model}: open_clip could not load it ({first})") from None
    torch_dtype = _pick_dtype(dtype, dev)
    net = net.to(dev).eval()
    if torch_dtype != torch.float32:
        net = net.to(torch_dtype)
    pp = get_model_preprocess_cfg(net)
    size = pp.get("size", 224)
    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    mean = tuple(float(v) for v in pp.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(float(v) for v in pp.get("std", (0.26862954, 0.26130258, 0.27577711)))
    cfg_text = config.read_text(encoding="utf-8") if config is not None else json.dumps({"arch": name})
    key = f"open_clip:{name.split(':', 1)[0] if not name.startswith('local-dir:') else 'local'}:" \
          f"{_file_digest(weights)}:{hashlib.blake2b(cfg_text.encode(), digest_size=8).hexdigest()}:{size[0]}x{size[1]}"
    return ClipModel(model=net, tokenizer=tokenizer, device=dev, dtype=torch_dtype, image_size=size, mean=mean,
                     std=std, key=key, source=model)
