"""Partitioners that split a labelled training set among clients, and the matching test split."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from numbers import Integral
from typing import Protocol

import numpy as np

from fedml.core.registry import Registry
from fedml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


class Partitioner(Protocol):
    """A function that assigns every sample index to exactly one client.

    It receives validated inputs (1-D ``labels``, ``1 <= num_clients <= len(labels)``) and must
    return ``num_clients`` integer index arrays that together cover each index exactly once.
    Method-specific parameters it does not use are ignored; ``groups`` is the natural client id of
    each sample (writer, speaker, ...) when the dataset has one, else ``None``.
    """

    def __call__(
        self,
        labels: np.ndarray,
        num_clients: int,
        rng: np.random.Generator,
        *,
        alpha: float,
        shards_per_client: int,
        groups: np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Return one index array per client."""
        ...


PARTITIONERS: Registry[Partitioner] = Registry("partition method", key="data_args.partition_method")
"""The ``data_args.partition_method`` names."""


def register_partitioner(name: str, fn: Partitioner) -> None:
    """Make ``fn`` available as ``data_args.partition_method: <name>``.

    Parameters
    ----------
    name : str
        The method name used in the config; registering an existing name replaces it.
    fn : Partitioner
        Called as ``fn(labels, num_clients, rng, alpha=..., shards_per_client=..., groups=...)``.

    """
    PARTITIONERS.register(name, fn, replace=True)


def partition_methods() -> list[str]:
    """Return the registered partition method names, sorted."""
    return PARTITIONERS.names()


def partition_labels(
    labels: np.ndarray,
    num_clients: int,
    method: str,
    rng: np.random.Generator,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Split sample indices among clients.

    Parameters
    ----------
    labels : np.ndarray
        1-D integer class labels, one per training sample.
    num_clients : int
        Number of clients, ``1 <= num_clients <= len(labels)``.
    method : str
        A registered method: ``homo`` (IID), ``hetero`` (Dirichlet over labels), ``shards``
        (McMahan et al.'s pathological split), ``power_law`` (lognormal client sizes),
        ``quantity_skew`` (Dirichlet client sizes), ``natural`` (by ``groups``), or one added with
        :func:`register_partitioner`.
    rng : np.random.Generator
        The only source of randomness; the same generator state gives the same split.
    alpha : float
        Dirichlet concentration for ``hetero``; smaller is more skewed. Must be > 0.
    shards_per_client : int
        Shards per client for ``shards``. Must be >= 1.
    groups : np.ndarray, optional
        The natural client id of each sample (any integer ids), needed by ``natural``.

    Returns
    -------
    list[np.ndarray]
        One sorted int64 index array per client; disjoint, covering every sample exactly once.

    Examples
    --------
    >>> parts = partition_labels(np.arange(10) % 2, 3, "homo", np.random.default_rng(0))
    >>> sorted(np.concatenate(parts).tolist()) == list(range(10))
    True

    """
    fn = PARTITIONERS.get(method)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size == 0:
        raise DataError("there are no samples to partition")
    if isinstance(num_clients, bool) or not isinstance(num_clients, Integral):
        raise ConfigError(f"train_args.client_num_in_total must be an integer, got {num_clients!r}")
    if not 1 <= num_clients <= labels.size:
        raise ConfigError(
            f"train_args.client_num_in_total must be between 1 and the number of training samples "
            f"({labels.size}), got {num_clients}"
        )
    # Only passed when there are groups, so partitioners written before ``groups`` existed still work.
    extra: dict[str, np.ndarray] = {}
    if groups is not None:
        extra["groups"] = np.asarray(groups)
        if extra["groups"].shape != labels.shape:
            raise DataError(
                f"groups must hold one id per sample, got shape {extra['groups'].shape} for {labels.size}"
            )
    parts = fn(labels, int(num_clients), rng, alpha=alpha, shards_per_client=shards_per_client, **extra)
    return _checked(parts, labels.size, int(num_clients), method)


def _checked(
    parts: Sequence[np.ndarray], num_samples: int, num_clients: int, method: str
) -> list[np.ndarray]:
    """Return ``parts`` as sorted int64 arrays after checking they partition ``range(num_samples)``."""
    if len(parts) != num_clients:
        raise DataError(f"partitioner {method!r} returned {len(parts)} clients, expected {num_clients}")
    result = [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    flat = np.concatenate(result)
    if flat.size != num_samples or (flat.size and (flat.min() < 0 or flat.max() >= num_samples)):
        raise DataError(f"partitioner {method!r} did not assign each of the {num_samples} samples once")
    if np.any(np.bincount(flat, minlength=num_samples) != 1):
        raise DataError(f"partitioner {method!r} assigned some samples to several clients")
    return result


def homo_partition(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, **_: object
) -> list[np.ndarray]:
    """IID split: shuffle all indices and cut them into near-equal parts."""
    return np.array_split(rng.permutation(labels.size), num_clients)


def hetero_partition(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, alpha: float, **_: object
) -> list[np.ndarray]:
    """Label-skewed split of Hsu et al. (2019): per class, client shares ~ Dirichlet(alpha).

    After the Dirichlet split, each empty client takes one sample from the currently largest
    client (lowest index on ties), so every client holds at least one sample.
    """
    if not alpha > 0:
        raise ConfigError(f"data_args.partition_alpha must be > 0, got {alpha!r}")
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        shares = rng.dirichlet(np.full(num_clients, float(alpha)))
        cuts = (np.cumsum(shares)[:-1] * members.size).astype(np.int64)
        for client, chunk in enumerate(np.split(members, np.clip(cuts, 0, members.size))):
            parts[client].append(chunk)
    clients = [np.concatenate(chunks) for chunks in parts]
    for empty in [i for i, part in enumerate(clients) if part.size == 0]:
        donor = int(np.argmax([part.size for part in clients]))
        clients[empty] = clients[donor][-1:]
        clients[donor] = clients[donor][:-1]
    return clients


def shards_partition(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    shards_per_client: int,
    **_: object,
) -> list[np.ndarray]:
    """Pathological split of McMahan et al. (2017): label-sorted shards, a few per client."""
    if isinstance(shards_per_client, bool) or not isinstance(shards_per_client, Integral):
        raise ConfigError(f"data_args.shards_per_client must be an integer, got {shards_per_client!r}")
    if shards_per_client < 1:
        raise ConfigError(f"data_args.shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * int(shards_per_client)
    if num_shards > labels.size:
        raise ConfigError(
            f"data_args.shards_per_client: {num_clients} clients x {shards_per_client} shards "
            f"= {num_shards} shards, more than the {labels.size} training samples"
        )
    shuffled = rng.permutation(labels.size)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owners = rng.permutation(num_shards).reshape(num_clients, int(shards_per_client))
    return [np.concatenate([shards[s] for s in row]) for row in owners]


POWER_LAW_SIGMA = 2.0
"""Standard deviation of the lognormal client sizes of ``power_law``, LEAF's and FedProx's value."""


def power_law_partition(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, **_: object
) -> list[np.ndarray]:
    """IID labels, LEAF-style sizes: client shares ~ lognormal(0, 2), each client at least one sample.

    LEAF and FedProx draw client sizes from a lognormal with sigma 2, which gives a few very large
    clients and a long tail of small ones, as in their natural data.
    """
    weights = rng.lognormal(0.0, POWER_LAW_SIGMA, num_clients)
    return _split_by_sizes(rng.permutation(labels.size), _sizes(weights, labels.size))


def quantity_skew_partition(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, *, alpha: float, **_: object
) -> list[np.ndarray]:
    """IID labels, skewed sizes of Li et al. (2022): client shares ~ Dirichlet(alpha), at least one each."""
    if not alpha > 0:
        raise ConfigError(f"data_args.partition_alpha must be > 0, got {alpha!r}")
    weights = rng.dirichlet(np.full(num_clients, float(alpha)))
    return _split_by_sizes(rng.permutation(labels.size), _sizes(weights, labels.size))


def natural_partition(
    labels: np.ndarray,
    num_clients: int,
    rng: np.random.Generator,
    *,
    groups: np.ndarray | None = None,
    **_: object,
) -> list[np.ndarray]:
    """One client per natural group (writer, speaker, id column); fewer clients take whole groups.

    With as many clients as groups, client ``k`` holds the ``k``-th group in sorted id order. With
    fewer, the groups are shuffled and dealt in near-equal numbers, so no group is ever split.
    """
    client_of = group_clients(groups, num_clients, rng)
    inverse = np.unique(np.asarray(groups), return_inverse=True)[1]
    owner = client_of[inverse.reshape(-1)]
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(owner, minlength=num_clients))[:-1])


def group_clients(groups: np.ndarray | None, num_clients: int, rng: np.random.Generator) -> np.ndarray:
    """Return the client of each distinct group id (in sorted id order) for the ``natural`` split.

    Raises
    ------
    DataError
        If the dataset has no natural groups.
    ConfigError
        If there are more clients than groups.

    """
    if groups is None:
        raise DataError(
            "data_args.partition_method natural needs a dataset with natural clients (femnist, "
            "shakespeare, fed_emnist, fed_cifar100, fed_shakespeare, or hf with natural_id_column)"
        )
    count = np.unique(np.asarray(groups)).size
    if num_clients > count:
        raise ConfigError(
            f"train_args.client_num_in_total is {num_clients}, but the natural partition has only {count} "
            "clients (writers, speakers or ids); use at most that many"
        )
    if num_clients == count:
        return np.arange(count)
    client_of = np.empty(count, dtype=np.int64)
    for client, members in enumerate(np.array_split(rng.permutation(count), num_clients)):
        client_of[members] = client
    return client_of


def _sizes(weights: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` samples in proportion to ``weights`` with at least one each (largest remainder)."""
    spare = total - weights.size
    scaled = weights / weights.sum() * spare
    sizes = np.floor(scaled).astype(np.int64)
    sizes[np.argsort(-(scaled - sizes), kind="stable")[: spare - int(sizes.sum())]] += 1
    return sizes + 1


def _split_by_sizes(order: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    return np.split(order, np.cumsum(sizes)[:-1])


register_partitioner("homo", homo_partition)
register_partitioner("hetero", hetero_partition)
register_partitioner("shards", shards_partition)
register_partitioner("power_law", power_law_partition)
register_partitioner("quantity_skew", quantity_skew_partition)
register_partitioner("natural", natural_partition)


def split_test_like_train(
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    client_train_indices: Sequence[np.ndarray],
    num_classes: int,
) -> list[np.ndarray]:
    """Divide the test set so that each client's test labels follow its training labels.

    Each class's test indices (in index order) are shared among clients in proportion to how many
    training samples of that class each client holds, rounded by largest remainder (ties go to
    the lower client index), so the result is deterministic.

    Parameters
    ----------
    train_labels, test_labels : np.ndarray
        1-D integer labels in ``0 .. num_classes - 1``.
    client_train_indices : Sequence[np.ndarray]
        Each client's training indices into ``train_labels``.
    num_classes : int
        Number of classes.

    Returns
    -------
    list[np.ndarray]
        One sorted int64 index array per client into ``test_labels``; disjoint, covering every
        test sample whose class occurs in some client's training data. A client with no training
        sample of class ``c`` receives no test sample of class ``c``.

    """
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    for name, values in (("train", train_labels), ("test", test_labels)):
        if values.ndim != 1:
            raise DataError(f"{name} labels must be 1-D, got shape {values.shape}")
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise DataError(f"{name} labels must lie in 0..{num_classes - 1}")
    counts = np.zeros((len(client_train_indices), num_classes), dtype=np.int64)
    for client, indices in enumerate(client_train_indices):
        counts[client] = np.bincount(train_labels[np.asarray(indices, dtype=np.int64)], minlength=num_classes)
    parts: list[list[np.ndarray]] = [[] for _ in client_train_indices]
    for label in range(num_classes):
        members = np.flatnonzero(test_labels == label)
        holders = counts[:, label]
        total = int(holders.sum())
        if members.size == 0 or total == 0:
            continue
        scaled = holders * members.size
        quota = scaled // total
        leftover = members.size - int(quota.sum())
        quota[np.argsort(-(scaled % total), kind="stable")[:leftover]] += 1
        for client, chunk in enumerate(np.split(members, np.cumsum(quota)[:-1])):
            parts[client].append(chunk)
    return [
        np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.empty(0, dtype=np.int64)
        for chunks in parts
    ]
