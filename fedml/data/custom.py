"""Your own data as a federated dataset: per-client ``torch.utils.data.Dataset``s or tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from fedml.data.dataset import FederatedDataset
from fedml.errors import DataError

ClientSource = Dataset[Any] | tuple[Any, Any]
"""One client's (or the global test) data: a map-style ``Dataset`` of ``(x, y)`` items, or ``(x, y)``."""


def from_client_datasets(
    train: Sequence[ClientSource],
    test: Sequence[ClientSource] | None = None,
    global_test: ClientSource | None = None,
    *,
    name: str = "custom",
    source: str = "custom client datasets",
    output_dim: int | None = None,
    batch_size: int = 10,
) -> FederatedDataset:
    """Build what ``FedMLRunner(args, device, dataset, model)`` trains from each client's own data.

    Parameters
    ----------
    train : Sequence[Dataset or (x, y)]
        Client ``k``'s training data at position ``k``: a map-style ``torch.utils.data.Dataset``
        whose items are ``(input, label)``, or a pair of tensors / arrays (first dimension = samples).
    test : Sequence[Dataset or (x, y)], optional
        Each client's own test data, in the same order (empty ones allowed).
    global_test : Dataset or (x, y), optional
        The server's test set. Without it, the server evaluates on the union of ``test``; without
        ``test``, each client is tested on a share of ``global_test`` whose labels follow its
        training labels (:func:`~fedml.data.partition.split_test_like_train`). One of the two is needed.
    name, source : str
        Shown in logs and the run directory.
    output_dim : int, optional
        Number of classes; defaults to the largest label + 1.
    batch_size : int
        Default batch size of the client views.

    Returns
    -------
    FederatedDataset
        One client per entry of ``train``. A cross-silo silo passes only its own data: one entry.

    Raises
    ------
    DataError
        Naming the client (or ``global_test``) whose data is empty of inputs, mismatched or not
        ``(x, y)`` items.

    Examples
    --------
    >>> a = (torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    >>> b = TensorDataset(torch.randn(3, 3), torch.tensor([1, 0, 1]))
    >>> ds = from_client_datasets([a, b], global_test=(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])))
    >>> ds.client_num, ds.local_sample_num(1), ds.test_data_num
    (2, 3, 4)

    """
    if not train:
        raise DataError("from_client_datasets: train is empty; give one training set per client")
    if test is not None and len(test) != len(train):
        raise DataError(f"from_client_datasets: {len(test)} test sets for {len(train)} clients")
    trains = [_tensors(f"train[{k}]", data) for k, data in enumerate(train)]
    train_x, train_y, train_idx = _concat("train", trains)
    if test is None:
        if global_test is None:
            raise DataError(
                "from_client_datasets: give each client's test sets (test=), a global_test=, or both"
            )
        test_x, test_y = _tensors("global_test", global_test)
        return FederatedDataset.from_tensors(
            train_x,
            train_y,
            test_x,
            test_y,
            train_idx,
            name=name,
            source=source,
            output_dim=output_dim,
            batch_size=batch_size,
        )
    tests = [_tensors(f"test[{k}]", data) for k, data in enumerate(test)]
    head = [] if global_test is None else [_tensors("global_test", global_test)]
    test_x, test_y, test_idx = _concat("test", head + tests)
    dataset = FederatedDataset.from_tensors(
        train_x,
        train_y,
        test_x,
        test_y,
        train_idx,
        test_idx[len(head) :],
        name=name,
        source=source,
        output_dim=output_dim,
        batch_size=batch_size,
    )
    if global_test is None:
        return dataset
    return dataclasses.replace(dataset, test_global_count=len(head[0][1]))


def _tensors(what: str, data: ClientSource) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, tuple):
        if len(data) != 2:
            raise DataError(f"{what}: expected an (x, y) pair, got a tuple of {len(data)}")
        return _as_tensor(what, data[0]), _as_tensor(what, data[1])
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
        raise DataError(
            f"{what}: expected a map-style torch Dataset or an (x, y) pair, got {type(data).__name__}"
        )
    items = [data[i] for i in range(len(data))]
    if not items:
        raise DataError(f"{what}: the dataset is empty")
    if not all(isinstance(item, tuple | list) and len(item) == 2 for item in items):
        raise DataError(f"{what}: each item must be an (input, label) pair")
    try:
        x = torch.stack([_as_tensor(what, item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items], dtype=torch.int64)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DataError(f"{what}: inputs must share one shape and labels be integers ({exc})") from exc
    return x, y


def _as_tensor(what: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray | list | int | float):
        return torch.as_tensor(np.asarray(value))
    raise DataError(f"{what}: expected tensors or numpy arrays, got {type(value).__name__}")


def _concat(
    split: str, parts: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    shapes = {tuple(x.shape[1:]) for x, _ in parts if len(x)}
    if len(shapes) > 1:
        raise DataError(f"{split}: clients' inputs differ in shape: {', '.join(map(str, sorted(shapes)))}")
    for k, (x, y) in enumerate(parts):
        if x.shape[0] != y.shape[0]:
            raise DataError(f"{split}[{k}]: {x.shape[0]} inputs but {y.shape[0]} labels")
    shape = shapes.pop() if shapes else tuple(parts[0][0].shape[1:])
    xs = [x if len(x) else x.reshape(0, *shape) for x, _ in parts]
    sizes = [len(y) for _, y in parts]
    starts = np.cumsum([0, *sizes])
    indices = [torch.arange(int(starts[k]), int(starts[k + 1])) for k in range(len(parts))]
    return torch.cat(xs), torch.cat([y.reshape(-1) for _, y in parts]), indices
