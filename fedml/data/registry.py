"""The dataset registry and ``load(args)``: raw data -> partition -> FederatedDataset."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedml.core.registry import Registry
from fedml.data.dataset import FederatedDataset, RawData
from fedml.data.mnist import INPUT_SHAPE as MNIST_INPUT_SHAPE
from fedml.data.mnist import OUTPUT_DIM as MNIST_OUTPUT_DIM
from fedml.data.mnist import load_mnist
from fedml.data.partition import partition_labels, split_test_like_train
from fedml.data.synthetic import INPUT_SHAPE as SYNTHETIC_INPUT_SHAPE
from fedml.data.synthetic import OUTPUT_DIM as SYNTHETIC_OUTPUT_DIM
from fedml.data.synthetic import SyntheticDataset, SyntheticSettings, load_synthetic
from fedml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PARTITION_STREAM = 0x5EED_DA7A
"""Tag mixed into the seed so the partition stream differs from other consumers of ``random_seed``."""

Loader = Callable[[Any], RawData]

ClientDataset = FederatedDataset | SyntheticDataset
"""What ``load`` returns: an object with ``client_num``, ``local_train(i)``, ``test_global``, ..."""

Builder = Callable[[Any], ClientDataset]
"""Builds a whole federated dataset from the run's arguments (it does its own split)."""


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: how to load it and what the model must accept and predict.

    ``loader`` returns raw tensors that ``load`` partitions; ``builder``, when set instead, returns
    the federated dataset itself (for datasets defined per client, such as ``synthetic``).
    """

    loader: Loader | None
    input_shape: tuple[int, ...]
    output_dim: int
    builder: Builder | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset", key="data_args.dataset")
"""The ``data_args.dataset`` names."""


def register_dataset(
    name: str, loader: Loader, input_shape: tuple[int, ...], output_dim: int, settings: Any = None
) -> None:
    """Make a dataset available as ``data_args.dataset: <name>``.

    Parameters
    ----------
    name : str
        Config name; registering an existing name replaces it.
    loader : Callable[[args], RawData]
        Called with the run's arguments (it may read ``data_cache_dir``, ``download``, ...).
    input_shape : tuple[int, ...]
        Shape of one input sample; :func:`load` checks the loaded data against it.
    output_dim : int
        Number of classes.
    settings : type[ComponentSettings], optional
        The keys the dataset adds to ``data_args``, with their defaults.

    Examples
    --------
    >>> import torch
    >>> def tiny(args):
    ...     x, y = torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])
    ...     return RawData(x, y, x, y, source="in memory")
    >>> register_dataset("tiny", tiny, input_shape=(2,), output_dim=2)
    >>> "tiny" in dataset_names()
    True

    """
    spec = DatasetSpec(loader, tuple(input_shape), int(output_dim))
    DATASETS.register(name, spec, settings=settings, replace=True)


def register_federated_dataset(
    name: str, builder: Builder, input_shape: tuple[int, ...], output_dim: int, settings: Any = None
) -> None:
    """Make a dataset that is defined per client available as ``data_args.dataset: <name>``.

    ``builder(args)`` returns the federated dataset directly; ``partition_method`` does not apply.
    """
    spec = DatasetSpec(None, tuple(input_shape), int(output_dim), builder)
    DATASETS.register(name, spec, settings=settings, replace=True)


def dataset_names() -> list[str]:
    """Return the registered dataset names, sorted."""
    return DATASETS.names()


def input_shape(name: str) -> tuple[int, ...]:
    """Return the shape of one input sample of dataset ``name``, e.g. ``(1, 28, 28)`` for mnist."""
    return _spec(name).input_shape


def load(args: Any) -> tuple[ClientDataset, int]:
    """Load the configured dataset and split it among clients.

    Parameters
    ----------
    args : Any
        An object with the attributes ``dataset``, ``data_cache_dir``, ``download``,
        ``partition_method``, ``partition_alpha``, ``shards_per_client``,
        ``client_num_in_total``, ``batch_size`` and ``random_seed`` (``fedml.init()``'s
        arguments or a ``types.SimpleNamespace``).

    Returns
    -------
    tuple[FederatedDataset, int]
        The dataset and its output dimension (number of classes). The training split comes
        from ``partition_method``; each client's test set follows its training labels. The
        split depends only on ``random_seed`` and never touches global random state.

    """
    missing = [key for key in _REQUIRED_ARGS if not hasattr(args, key)]
    if missing:
        raise ConfigError(f"data loading needs the argument(s) {', '.join(missing)}")
    started = time.perf_counter()
    spec = _spec(args.dataset)
    seed = args.random_seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"common_args.random_seed must be a non-negative integer, got {seed!r}")

    if spec.builder is not None:
        built = spec.builder(args)
        built.load_seconds = round(time.perf_counter() - started, 6)
        logger.info("dataset %s: %s, %d clients", args.dataset, built.source, built.client_num)
        return built, spec.output_dim
    if spec.loader is None:
        raise ConfigError(f"dataset {args.dataset!r} is registered without a loader or builder")
    raw = spec.loader(args)
    if tuple(raw.train_x.shape[1:]) != spec.input_shape:
        raise DataError(
            f"dataset {args.dataset!r} loaded inputs of shape {tuple(raw.train_x.shape[1:])}, "
            f"registered as {spec.input_shape}"
        )
    train_labels = raw.train_y.numpy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, PARTITION_STREAM]))
    client_train = partition_labels(
        train_labels,
        args.client_num_in_total,
        args.partition_method,
        rng,
        alpha=args.partition_alpha,
        shards_per_client=args.shards_per_client,
    )
    client_test = split_test_like_train(train_labels, raw.test_y.numpy(), client_train, spec.output_dim)
    dataset = FederatedDataset(
        name=args.dataset,
        source=raw.source,
        train_x=raw.train_x,
        train_y=raw.train_y,
        test_x=raw.test_x,
        test_y=raw.test_y,
        client_train_indices=[torch.from_numpy(np.asarray(i)) for i in client_train],
        client_test_indices=[torch.from_numpy(np.asarray(i)) for i in client_test],
        output_dim=spec.output_dim,
        batch_size=args.batch_size,
    )
    logger.info(
        "dataset %s from %s: %d train / %d test samples, %d clients, partition %s "
        "(partition_alpha=%s, shards_per_client=%s)",
        args.dataset,
        raw.source,
        dataset.train_data_num,
        dataset.test_data_num,
        dataset.client_num,
        args.partition_method,
        args.partition_alpha,
        args.shards_per_client,
    )
    dataset.load_seconds = round(time.perf_counter() - started, 6)
    return dataset, spec.output_dim


_REQUIRED_ARGS = (
    "dataset",
    "data_cache_dir",
    "download",
    "partition_method",
    "partition_alpha",
    "shards_per_client",
    "client_num_in_total",
    "batch_size",
    "random_seed",
)


def _spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def _load_mnist_args(args: Any) -> RawData:
    return load_mnist(args.data_cache_dir, download=bool(args.download))


register_dataset("mnist", _load_mnist_args, MNIST_INPUT_SHAPE, MNIST_OUTPUT_DIM)
register_federated_dataset(
    "synthetic", load_synthetic, SYNTHETIC_INPUT_SHAPE, SYNTHETIC_OUTPUT_DIM, settings=SyntheticSettings
)
