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
from fedml.data import cifar, hf, leaf, tff
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
    ``input_shape`` and ``output_dim`` are ``None`` when the files decide them (``hf``).
    """

    loader: Loader | None
    input_shape: tuple[int, ...] | None
    output_dim: int | None
    builder: Builder | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset", key="data_args.dataset")
"""The ``data_args.dataset`` names."""


def register_dataset(
    name: str,
    loader: Loader,
    input_shape: tuple[int, ...] | None,
    output_dim: int | None,
    settings: Any = None,
) -> None:
    """Make a dataset available as ``data_args.dataset: <name>``.

    Parameters
    ----------
    name : str
        Config name; registering an existing name replaces it.
    loader : Callable[[args], RawData]
        Called with the run's arguments (it may read ``data_cache_dir``, ``download``, ...).
    input_shape : tuple[int, ...] or None
        Shape of one input sample; :func:`load` checks the loaded data against it. ``None``: the
        files decide, and :func:`input_shape` answers once the dataset has been loaded.
    output_dim : int or None
        Number of classes; ``None``: the loader's ``RawData.output_dim`` says.
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
    shape = None if input_shape is None else tuple(input_shape)
    spec = DatasetSpec(loader, shape, None if output_dim is None else int(output_dim))
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
    """Return the shape of one input sample of dataset ``name``, e.g. ``(1, 28, 28)`` for mnist.

    For a dataset whose files decide the shape (``hf``), the shape of the last one loaded here.

    Raises
    ------
    DataError
        If the files decide the shape and no such dataset has been loaded in this process.

    """
    shape = _spec(name).input_shape
    if shape is None:
        shape = _LOADED_SHAPES.get(name)
    if shape is None:
        raise DataError(
            f"dataset {name!r} takes its input shape from its files; call fedml.data.load(args) first, "
            "or pass input_shape= to fedml.model.create"
        )
    return shape


_LOADED_SHAPES: dict[str, tuple[int, ...]] = {}
"""Input shape of the last load of each dataset registered without one (``model.create`` reads it)."""


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

    Notes
    -----
    Data with natural clients (LEAF, TFF, ``hf`` with ``natural_id_column``) is split by them
    (``partition_method: natural``) unless the configuration sets ``partition_method``, into one
    client per writer/speaker/id unless it sets ``client_num_in_total``; under ``natural`` each
    client's test set is its own groups' test samples. A plain namespace counts as setting both.
    When ``natural`` is chosen this way, ``args.partition_method`` is set to it, so the run's
    recorded configuration reproduces the split.

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
        return built, built.output_dim
    if spec.loader is None:
        raise ConfigError(f"dataset {args.dataset!r} is registered without a loader or builder")
    raw = spec.loader(args)
    shape = tuple(raw.train_x.shape[1:])
    if spec.input_shape is None:
        _LOADED_SHAPES[args.dataset] = shape
    elif shape != spec.input_shape:
        raise DataError(
            f"dataset {args.dataset!r} loaded inputs of shape {shape}, registered as {spec.input_shape}"
        )
    output_dim = spec.output_dim if spec.output_dim is not None else raw.output_dim
    if output_dim is None:
        raise DataError(f"dataset {args.dataset!r} is registered without output_dim and its loader gave none")
    method = _partition_method(args, raw)
    if method != args.partition_method:
        # Recorded, so the run directory's config.yaml reproduces this split when run again.
        args.partition_method = method
    train_labels = raw.train_y.numpy()
    rng = np.random.default_rng(np.random.SeedSequence([seed, PARTITION_STREAM]))
    client_train = partition_labels(
        train_labels,
        _client_count(args, method, raw),
        method,
        rng,
        alpha=args.partition_alpha,
        shards_per_client=args.shards_per_client,
        groups=raw.train_groups,
    )
    if method == "natural" and raw.test_groups is not None and raw.train_groups is not None:
        client_test = natural_test_split(raw.train_groups, raw.test_groups, client_train)
    else:
        client_test = split_test_like_train(train_labels, raw.test_y.numpy(), client_train, output_dim)
    dataset = FederatedDataset(
        name=args.dataset,
        source=raw.source,
        train_x=raw.train_x,
        train_y=raw.train_y,
        test_x=raw.test_x,
        test_y=raw.test_y,
        client_train_indices=[torch.from_numpy(np.asarray(i)) for i in client_train],
        client_test_indices=[torch.from_numpy(np.asarray(i)) for i in client_test],
        output_dim=output_dim,
        batch_size=args.batch_size,
        train_transform=raw.train_transform,
    )
    logger.info(
        "dataset %s from %s: %d train / %d test samples, %d clients, partition %s "
        "(partition_alpha=%s, shards_per_client=%s)%s",
        args.dataset,
        raw.source,
        dataset.train_data_num,
        dataset.test_data_num,
        dataset.client_num,
        method,
        args.partition_alpha,
        args.shards_per_client,
        ", training batches augmented (sequential engine only)" if dataset.augments_training else "",
    )
    dataset.load_seconds = round(time.perf_counter() - started, 6)
    return dataset, output_dim


def natural_test_split(
    train_groups: np.ndarray, test_groups: np.ndarray, client_train_indices: list[np.ndarray]
) -> list[np.ndarray]:
    """Give each client the test samples of the groups (writers, speakers) it trains on.

    A test sample whose group has no training sample belongs to no client; it stays in the global
    test set.

    Examples
    --------
    >>> natural_test_split(np.array([7, 7, 9]), np.array([9, 7, 5]), [np.array([2]), np.array([0, 1])])
    [array([0]), array([1])]

    """
    owner = np.empty(len(train_groups), dtype=np.int64)
    for client, indices in enumerate(client_train_indices):
        owner[indices] = client
    ids, first = np.unique(np.asarray(train_groups), return_index=True)
    test_groups = np.asarray(test_groups)
    position = np.clip(np.searchsorted(ids, test_groups), 0, max(ids.size - 1, 0))
    known = ids[position] == test_groups if ids.size else np.zeros(test_groups.shape, dtype=bool)
    test_owner = np.where(known, owner[first][position], -1)
    return [np.flatnonzero(test_owner == client) for client in range(len(client_train_indices))]


def _explicit(args: Any, section: str, key: str) -> bool:
    """Return whether ``key`` was set by the user; a plain namespace's keys all count as set."""
    model = getattr(args, section, None)
    fields_set = getattr(model, "model_fields_set", None)
    return True if fields_set is None else key in fields_set


def _partition_method(args: Any, raw: RawData) -> str:
    """``partition_method`` as set, else ``natural`` for data with natural clients (``train_groups``)."""
    if raw.train_groups is not None and not _explicit(args, "data_args", "partition_method"):
        return "natural"
    return str(args.partition_method)


def _client_count(args: Any, method: str, raw: RawData) -> int:
    """``client_num_in_total`` as set, else one client per natural group under ``natural``."""
    natural = method == "natural" and raw.train_groups is not None
    if natural and not _explicit(args, "train_args", "client_num_in_total"):
        return int(np.unique(np.asarray(raw.train_groups)).size)
    return int(args.client_num_in_total)


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
# The CIFAR key (augment) is declared once, with cifar10; cifar100 and fed_cifar100 read it too.
register_dataset("cifar10", cifar.load_cifar10, cifar.INPUT_SHAPE, 10, settings=cifar.CifarSettings)
register_dataset("cifar100", cifar.load_cifar100, cifar.INPUT_SHAPE, 100)
register_dataset("femnist", leaf.load_femnist, leaf.FEMNIST_INPUT_SHAPE, leaf.FEMNIST_OUTPUT_DIM)
register_dataset(
    "shakespeare", leaf.load_shakespeare, leaf.SHAKESPEARE_INPUT_SHAPE, leaf.SHAKESPEARE_OUTPUT_DIM
)
register_dataset("fed_emnist", tff.load_fed_emnist, leaf.FEMNIST_INPUT_SHAPE, leaf.FEMNIST_OUTPUT_DIM)
register_dataset("fed_cifar100", tff.load_fed_cifar100, cifar.INPUT_SHAPE, 100)
register_dataset(
    "fed_shakespeare", tff.load_fed_shakespeare, leaf.SHAKESPEARE_INPUT_SHAPE, leaf.SHAKESPEARE_OUTPUT_DIM
)
register_dataset("hf", hf.load_hf, None, None, settings=hf.HfSettings)
register_federated_dataset(
    "synthetic", load_synthetic, SYNTHETIC_INPUT_SHAPE, SYNTHETIC_OUTPUT_DIM, settings=SyntheticSettings
)
