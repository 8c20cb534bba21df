"""Neural networks: the velocity-field convention and adapters, an MLP, a compact UNet, torchcfm's ADM UNet
(:class:`ADMUNet`, loads torchcfm checkpoints), two image classifiers (a CNN and an MLP), and a registry that
rebuilds a model from a JSON spec.

A velocity field is any ``nn.Module`` called as ``model(t, x)`` with ``t`` (B,) in [0, 1] and ``x``
(B, *event_shape), returning a tensor shaped like ``x`` (torchcfm's convention); see :mod:`.base`.
"""

from orwcfm.models.adm import ADMUNet
from orwcfm.models.base import VelocityField, XTAdapter, broadcast_time, num_parameters, time_embedding
from orwcfm.models.classifier import (
    CLASSIFIER_KINDS,
    ClassifierTrainResult,
    DigitsClassifier,
    MLPClassifier,
    accuracy,
    predict_proba,
    train_classifier,
)
from orwcfm.models.mlp import MLP
from orwcfm.models.registry import ModelSpec, available_models, build_model, default_spec
from orwcfm.models.unet import UNet

__all__ = [
    "ADMUNet",
    "CLASSIFIER_KINDS",
    "MLP",
    "MLPClassifier",
    "ClassifierTrainResult",
    "DigitsClassifier",
    "ModelSpec",
    "UNet",
    "VelocityField",
    "XTAdapter",
    "accuracy",
    "available_models",
    "broadcast_time",
    "build_model",
    "default_spec",
    "num_parameters",
    "predict_proba",
    "time_embedding",
    "train_classifier",
]
