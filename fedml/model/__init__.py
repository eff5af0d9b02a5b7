"""Models: a registry of named architectures and ``create(args, output_dim)``.

``docs/models.md`` lists every model with its input, output, parameter count and engine.

Examples
--------
>>> from types import SimpleNamespace
>>> model = create(SimpleNamespace(model="lr", dataset="mnist", random_seed=0), output_dim=10)
>>> type(model).__name__
'LogisticRegression'

"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedml.core.registry import Registry
from fedml.model.cnn import CNN, CifarCNN, cnn
from fedml.model.linear import MLP, LogisticRegression
from fedml.model.resnet import ResNet, resnet18, resnet20
from fedml.model.rnn import CharLSTM
from fedml.model.transformer import TinyTransformer

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
"""Builds a model from the input shape of one sample and the number of outputs."""

MODELS: Registry[ModelFactory] = Registry("model", key="model_args.model")
"""The ``model_args.model`` names."""


def register_model(name: str, factory: ModelFactory) -> None:
    """Make ``factory(input_shape, output_dim)`` available as ``model_args.model: name``."""
    MODELS.register(name, factory, replace=True)


def model_names() -> list[str]:
    """Return the registered model names."""
    return MODELS.names()


def create(args: Any, output_dim: int, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Build ``args.model`` for ``args.dataset``, initialised from ``args.random_seed``.

    The initialisation is seeded without touching the global RNG, so the same seed gives the same
    initial model in every process. ``input_shape`` defaults to the registered shape of the dataset.

    Raises
    ------
    ConfigError
        If the model name is not registered; the message lists the valid names.

    """
    factory = MODELS.get(args.model)
    if input_shape is None:
        from fedml.data import input_shape as dataset_input_shape

        input_shape = dataset_input_shape(args.dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(args.random_seed))
        return factory(tuple(input_shape), output_dim)


register_model("lr", LogisticRegression)
register_model("mlp", MLP)
register_model("cnn", cnn)
register_model("resnet18", resnet18)
register_model("resnet20", resnet20)
# Imported on first use: torchvision takes a while to import and only this model needs it.
MODELS.register("mobilenet_v2", "fedml.model.mobilenet:mobilenet_v2", replace=True)
register_model("rnn", CharLSTM)
register_model("transformer_tiny", TinyTransformer)

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "CharLSTM",
    "CifarCNN",
    "LogisticRegression",
    "ModelFactory",
    "ResNet",
    "TinyTransformer",
    "create",
    "model_names",
    "register_model",
]
