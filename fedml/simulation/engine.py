"""Which engine trains the clients of a single-process run: ``train_args.engine`` and the ``auto`` rule."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.errors import ConfigError

if TYPE_CHECKING:
    from fedml.core.algorithms import Algorithm, LocalObjective
    from fedml.data import ClientDataset

log = logging.getLogger(__name__)

ENGINES = ("auto", "sequential", "vectorized")
"""The values of ``train_args.engine``."""

AUTO_MIN_CLIENTS = 4
"""``auto`` vectorizes on the CPU only from this many clients per round."""

AUTO_MAX_PARAMS = 1_000_000
"""``auto`` vectorizes on the CPU only models with at most this many trainable parameters."""


def choose_engine(
    args: Any,
    device: torch.device,
    model: nn.Module,
    algorithm: Algorithm,
    dataset: ClientDataset,
    custom_trainer: bool,
    sequential_reason: str | None = None,
) -> tuple[str, LocalObjective | None]:
    """Return ``("sequential" | "vectorized", objective)`` for this run and log the choice in one line.

    ``vectorized`` needs the default ``ClientTrainer`` (``sequential_reason`` says why another trainer is
    used), an algorithm with a ``local_objective()``, SGD,
    and a model without in-place buffers or random layers that ``vmap`` can run; otherwise the run is
    sequential. ``auto`` picks vectorized when it is possible and either the device is a GPU or there are
    at least ``AUTO_MIN_CLIENTS`` clients per round and at most ``AUTO_MAX_PARAMS`` trainable parameters
    (many small clients: the per-step Python overhead dominates, and one batched step removes it).

    Raises
    ------
    ConfigError
        If ``train_args.engine`` is not one of ``ENGINES``.

    """
    from fedml.simulation.vectorized import probe, unsupported_reason

    engine = args.engine
    if engine not in ENGINES:
        raise ConfigError(f"train_args.engine: unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "sequential":
        log.info("engine: sequential (train_args.engine)")
        return "sequential", None
    local_objective = getattr(algorithm, "local_objective", None)
    objective = local_objective() if callable(local_objective) else None
    reason = "a custom ClientTrainer is used" if custom_trainer else sequential_reason
    if reason is None and getattr(dataset, "augments_training", False):
        reason = (
            "the dataset augments training batches (data_args.augment), which only sequential training does"
        )
    reason = reason or unsupported_reason(model, args, objective)
    if reason is None and objective is not None:
        reason = probe(model.to(device), _first_input(dataset).to(device), objective)
    if reason is not None:
        level = logging.WARNING if engine == "vectorized" else logging.INFO
        log.log(level, "engine: sequential, because the vectorized engine cannot run here: %s", reason)
        return "sequential", None
    if engine == "auto" and not auto_prefers_vectorized(args, device, model):
        log.info(
            "engine: sequential (auto: CPU with %d clients per round and %d parameters%s)",
            args.client_num_per_round,
            _param_count(model),
            ", convolutional" if _convolutional(model) else "",
        )
        return "sequential", None
    log.info("engine: vectorized (%s)", "train_args.engine" if engine == "vectorized" else "auto")
    return "vectorized", objective


def auto_prefers_vectorized(args: Any, device: torch.device, model: nn.Module) -> bool:
    """Return the ``auto`` rule's preference, for a run the vectorized engine can train.

    On a CPU, convolutional models train sequentially: batched per-client convolutions measured slower
    than one client at a time there (the FedAvg CIFAR CNN at 0.67x, ResNet-20 at 0.8-0.9x;
    docs/models.md, benchmarks/datasets.py).
    """
    if device.type == "cuda":
        return True
    if _convolutional(model):
        return False
    return args.client_num_per_round >= AUTO_MIN_CLIENTS and _param_count(model) <= AUTO_MAX_PARAMS


def _convolutional(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _first_input(dataset: ClientDataset) -> torch.Tensor:
    x, _ = next(iter(dataset.test_global.batches(1)))
    return x[0]
