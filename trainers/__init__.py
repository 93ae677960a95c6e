"""Models, the fast training loop, evaluation and the saved-model contract.

Imports only torch, numpy, pandas, pyarrow, safetensors and ``pipelines`` (torchvision and
timm lazily, when such a model is asked for); never prefect or ``flows``.
"""
from .augment import AugmentConfig, augment_batch, crop_flip, cutout, to_float
from .evaluate import der, evaluate, load_trigger, resolve_trigger
from .loop import (PRESETS, TrainConfig, TrainHooks, TrainResult, fit, flooding_loss, per_sample_loss,
                   predict_logits, preset, resolve_device)
from .models import (CIFAR10_MEAN, CIFAR10_STD, MODELS, ImageClassifier, Normalize, build_model,
                     head_module, penultimate_features)
from .saved import WRAPPERS, bare_model, load_model, read_config, save_model
from .train import train_and_save

__all__ = [
    "AugmentConfig", "augment_batch", "crop_flip", "cutout", "to_float",
    "der", "evaluate", "load_trigger", "resolve_trigger",
    "PRESETS", "TrainConfig", "TrainHooks", "TrainResult", "fit", "flooding_loss", "per_sample_loss",
    "predict_logits", "preset", "resolve_device",
    "CIFAR10_MEAN", "CIFAR10_STD", "MODELS", "ImageClassifier", "Normalize", "build_model",
    "head_module", "penultimate_features",
    "WRAPPERS", "bare_model", "load_model", "read_config", "save_model",
    "train_and_save",
]
