"""The federated dataset object: shared global tensors plus per-client index views."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedml.data.partition import split_test_like_train
from fedml.errors import DataError

TensorLike = torch.Tensor | np.ndarray

GATHER_BLOCK_ROWS = 8192
"""Samples gathered from the shared tensors at once when iterating a view in batches."""

BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""Training-time augmentation of one batch of inputs, drawing its randomness from the generator."""


@dataclass(frozen=True, eq=False)
class RawData:
    """What a dataset loader returns: global train/test tensors and where they came from.

    Attributes
    ----------
    train_x, test_x : torch.Tensor
        Inputs, first dimension = samples.
    train_y, test_y : torch.Tensor
        int64 class labels, 1-D.
    source : str
        Human-readable origin, e.g. ``"IDX files in /data/MNIST/raw"``.
    train_groups, test_groups : np.ndarray, optional
        The natural client id (writer, speaker, ...) of each sample, for ``partition_method: natural``.
    train_transform : BatchTransform, optional
        Augmentation applied to each training batch (never to test data).
    output_dim : int, optional
        Number of classes, for datasets whose count comes from their files (``hf``).

    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    train_groups: np.ndarray | None = None
    test_groups: np.ndarray | None = None
    train_transform: BatchTransform | None = None
    output_dim: int | None = None


@dataclass(eq=False, repr=False)
class ClientData:
    """One client's data as an index view into shared tensors (no copy).

    Iterating yields ``(x, y)`` batches of ``batch_size`` in index order, so FedML-style code can
    write ``for x, y in loader``. With a ``transform`` (training augmentation), each batch's inputs
    pass through it with a generator seeded from the shuffle generator, so a seeded run augments
    identically every time and every epoch anew.

    Attributes
    ----------
    x, y : torch.Tensor
        The shared global inputs and labels (the same objects the dataset holds).
    indices : torch.Tensor
        int64 indices of this client's samples into ``x`` and ``y``.
    batch_size : int
        Default batch size for iteration.
    transform : BatchTransform, optional
        Augmentation applied to every batch this view yields.

    """

    x: torch.Tensor
    y: torch.Tensor
    indices: torch.Tensor
    batch_size: int
    transform: BatchTransform | None = None

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __repr__(self) -> str:
        return f"ClientData(samples={len(self)}, batch_size={self.batch_size})"

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x[indices], y[indices])`` as new tensors."""
        return self.x[self.indices], self.y[self.indices]

    def batches(
        self, batch_size: int | None = None, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches; the last one may be shorter.

        Parameters
        ----------
        batch_size : int, optional
            Samples per batch; defaults to ``self.batch_size``.
        generator : torch.Generator, optional
            When given, the order is ``torch.randperm(len(self), generator=generator)``, so a
            seeded generator reproduces the same shuffle; otherwise index order. A ``transform``
            draws from a generator seeded by one draw from this one after the shuffle (by 0 without).

        Yields
        ------
        tuple[torch.Tensor, torch.Tensor]
            A batch of inputs and labels.

        """
        size = self.batch_size if batch_size is None else batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise DataError(f"batch_size must be a positive integer, got {size!r}")
        if generator is None and self._covers_all_in_order():
            batches = self._iter_slices(size)
        else:
            order = self.indices
            if generator is not None:
                order = order[torch.randperm(order.numel(), generator=generator)]
            batches = self._iter_batches(order, size)
        if self.transform is None:
            return batches
        return self._iter_transformed(batches, self.transform, _transform_generator(generator))

    @staticmethod
    def _iter_transformed(
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        transform: BatchTransform,
        generator: torch.Generator,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches:
            yield transform(x, generator), y

    def _covers_all_in_order(self) -> bool:
        # A view of every sample in order (a global test set) can be batched by slicing, without a gather.
        if "_in_order" not in self.__dict__:
            n = self.indices.numel()
            self._in_order = n == len(self.x) and torch.equal(self.indices, torch.arange(n))
        return self._in_order

    def _iter_slices(self, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.x), size):
            yield self.x[start : start + size], self.y[start : start + size]

    def _iter_batches(self, order: torch.Tensor, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One gather per block of batches instead of one per batch: the batches are slices (views) of
        # the block, with the same values, and the block size bounds the memory of the copy.
        block = size * max(1, GATHER_BLOCK_ROWS // size)
        for block_start in range(0, order.numel(), block):
            chunk = order[block_start : block_start + block]
            xs, ys = self.x[chunk], self.y[chunk]
            for start in range(0, chunk.numel(), size):
                yield xs[start : start + size], ys[start : start + size]


def _transform_generator(generator: torch.Generator | None) -> torch.Generator:
    """Return a generator for augmentation: seeded by one draw from ``generator``, or by 0 without one."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    # One draw per call (per epoch), so each epoch augments anew even where the shuffle draws nothing.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(seed)


class FedMLTuple:
    """Lets a dataset be unpacked as FedML's 8-tuple, for code written against the original FedML.

    ``train_data_num, test_data_num, train_data_global, test_data_global, train_data_local_num_dict,
    train_data_local_dict, test_data_local_dict, class_num = dataset``
    """

    def __iter__(self) -> Iterator[Any]:
        fields = (
            "train_data_num",
            "test_data_num",
            "train_global",
            "test_global",
            "train_data_local_num_dict",
            "train_data_local_dict",
            "test_data_local_dict",
            "output_dim",
        )
        return iter(getattr(self, name) for name in fields)


@dataclass(eq=False)
class FederatedDataset(FedMLTuple):
    """Global train/test tensors and, per client, index views of local train/test data.

    Unpacks into FedML's 8 values: ``train_data_num, test_data_num, train_data_global,
    test_data_global, train_data_local_num_dict, train_data_local_dict, test_data_local_dict,
    class_num = dataset``.

    Attributes
    ----------
    name : str
        Dataset name, e.g. ``"mnist"``.
    source : str
        Where the data came from (embedded subset, IDX files, download, custom tensors).
    train_x, train_y, test_x, test_y : torch.Tensor
        Global tensors shared by every client view; labels are int64.
    client_train_indices, client_test_indices : list[torch.Tensor]
        Per client, int64 indices into the global train / test tensors.
    output_dim : int
        Number of classes.
    batch_size : int
        Default batch size of the client views.

    """

    name: str
    source: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    client_train_indices: list[torch.Tensor]
    client_test_indices: list[torch.Tensor]
    output_dim: int
    batch_size: int
    load_seconds: float | None = field(default=None, compare=False)
    """How long ``fedml.data.load`` took to build this dataset (``None`` when built otherwise)."""
    train_transform: BatchTransform | None = None
    """Augmentation applied to the batches of every client's training view (never to test data)."""
    test_global_count: int | None = None
    """When set, the global test set is the first this many test samples (the rest are clients' own)."""

    def __post_init__(self) -> None:
        _check_arrays(self.train_x, self.train_y, self.test_x, self.test_y, self.output_dim)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.client_train_indices:
            raise DataError("client_train_indices is empty: a federated dataset needs at least one client")
        if len(self.client_test_indices) != len(self.client_train_indices):
            raise DataError(
                f"client_test_indices has {len(self.client_test_indices)} entries but there are "
                f"{len(self.client_train_indices)} clients"
            )
        self.client_train_indices = _as_index_list(
            "client_train_indices", self.client_train_indices, len(self.train_y)
        )
        self.client_test_indices = _as_index_list(
            "client_test_indices", self.client_test_indices, len(self.test_y)
        )
        count = self.test_global_count
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= len(self.test_y)
        ):
            raise DataError(f"test_global_count must be an integer in 0..{len(self.test_y)}, got {count!r}")

    @classmethod
    def from_tensors(
        cls,
        train_x: TensorLike,
        train_y: TensorLike,
        test_x: TensorLike,
        test_y: TensorLike,
        client_train_indices: Sequence[Any],
        client_test_indices: Sequence[Any] | None = None,
        *,
        name: str = "custom",
        source: str = "custom tensors",
        output_dim: int | None = None,
        batch_size: int = 10,
    ) -> FederatedDataset:
        """Build a federated dataset from your own tensors and client split.

        Parameters
        ----------
        train_x, train_y, test_x, test_y : torch.Tensor or np.ndarray
            Global inputs and integer class labels (first dimension = samples).
        client_train_indices : Sequence
            Per client, indices into the training set (lists, arrays or tensors).
        client_test_indices : Sequence, optional
            Per client, indices into the test set. Defaults to
            :func:`~fedml.data.partition.split_test_like_train`, which gives each client test
            labels distributed like its training labels.
        name : str
            Dataset name shown in logs.
        source : str
            Where the data came from, shown in logs.
        output_dim : int, optional
            Number of classes; defaults to the largest label + 1.
        batch_size : int
            Default batch size of the client views.

        Returns
        -------
        FederatedDataset
            The dataset; invalid shapes, labels or indices raise :class:`~fedml.errors.DataError`.

        Examples
        --------
        >>> x, y = torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])
        >>> ds = FederatedDataset.from_tensors(x, y, x, y, [[0, 1, 2], [3, 4, 5]])
        >>> ds.client_num, ds.local_sample_num(1), ds.output_dim
        (2, 3, 2)

        """
        train_x, test_x = _as_tensor("train_x", train_x), _as_tensor("test_x", test_x)
        train_y, test_y = _as_labels("train_y", train_y), _as_labels("test_y", test_y)
        if output_dim is None:
            output_dim = int(max(train_y.max(initial=-1), test_y.max(initial=-1))) + 1
        train_labels, test_labels = torch.from_numpy(train_y), torch.from_numpy(test_y)
        _check_arrays(train_x, train_labels, test_x, test_labels, output_dim)
        train_idx = _as_index_list("client_train_indices", client_train_indices, len(train_y))
        if client_test_indices is None:
            client_test_indices = split_test_like_train(
                train_y, test_y, [idx.numpy() for idx in train_idx], output_dim
            )
        return cls(
            name=name,
            source=source,
            train_x=train_x,
            train_y=train_labels,
            test_x=test_x,
            test_y=test_labels,
            client_train_indices=train_idx,
            client_test_indices=_as_index_list("client_test_indices", client_test_indices, len(test_y)),
            output_dim=output_dim,
            batch_size=batch_size,
        )

    def __repr__(self) -> str:
        return (
            f"FederatedDataset(name={self.name!r}, source={self.source!r}, train={self.train_data_num}, "
            f"test={self.test_data_num}, clients={self.client_num}, output_dim={self.output_dim})"
        )

    @property
    def client_num(self) -> int:
        """Number of clients."""
        return len(self.client_train_indices)

    @property
    def train_data_num(self) -> int:
        """Number of global training samples."""
        return len(self.train_y)

    @property
    def test_data_num(self) -> int:
        """Number of global test samples."""
        return len(self.test_y) if self.test_global_count is None else self.test_global_count

    @property
    def augments_training(self) -> bool:
        """Whether training batches are augmented (which the vectorized engine does not do)."""
        return self.train_transform is not None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.train_x.shape[1:])

    @property
    def train_global(self) -> ClientData:
        """The whole training set as a :class:`ClientData` view."""
        return ClientData(self.train_x, self.train_y, torch.arange(self.train_data_num), self.batch_size)

    @property
    def test_global(self) -> ClientData:
        """The whole test set as a :class:`ClientData` view."""
        return ClientData(self.test_x, self.test_y, torch.arange(self.test_data_num), self.batch_size)

    def local_train(self, client: int) -> ClientData:
        """Return client ``client``'s training data (a view, not a copy)."""
        return ClientData(
            self.train_x,
            self.train_y,
            self.client_train_indices[self._check(client)],
            self.batch_size,
            self.train_transform,
        )

    def local_test(self, client: int) -> ClientData:
        """Return client ``client``'s test data (a view, not a copy)."""
        return ClientData(
            self.test_x, self.test_y, self.client_test_indices[self._check(client)], self.batch_size
        )

    def local_sample_num(self, client: int) -> int:
        """Return the number of training samples of client ``client``."""
        return int(self.client_train_indices[self._check(client)].numel())

    @property
    def train_data_local_num_dict(self) -> dict[int, int]:
        """Client index -> number of local training samples (FedML name)."""
        return {i: self.local_sample_num(i) for i in range(self.client_num)}

    @property
    def train_data_local_dict(self) -> dict[int, ClientData]:
        """Client index -> local training data (FedML name)."""
        return {i: self.local_train(i) for i in range(self.client_num)}

    @property
    def test_data_local_dict(self) -> dict[int, ClientData]:
        """Client index -> local test data (FedML name)."""
        return {i: self.local_test(i) for i in range(self.client_num)}

    def _check(self, client: int) -> int:
        if isinstance(client, bool) or not isinstance(client, int) or not 0 <= client < self.client_num:
            raise DataError(f"client index must be an integer in 0..{self.client_num - 1}, got {client!r}")
        return client


def _as_tensor(name: str, value: TensorLike) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise DataError(f"{name} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _as_labels(name: str, value: TensorLike) -> np.ndarray:
    labels = _as_tensor(name, value)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"{name} must hold integer class labels, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise DataError(f"{name} must be 1-D (one label per sample), got shape {tuple(labels.shape)}")
    return labels.detach().cpu().numpy().astype(np.int64)


def _check_arrays(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, output_dim: int
) -> None:
    _check_pair("train", train_x, train_y)
    _check_pair("test", test_x, test_y)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"train and test inputs differ in shape: {tuple(train_x.shape[1:])} vs {tuple(test_x.shape[1:])}"
        )
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
        raise DataError(f"output_dim must be a positive integer, got {output_dim!r}")
    for split, labels in (("train", train_y), ("test", test_y)):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= output_dim):
            raise DataError(f"{split} labels must lie in 0..{output_dim - 1} (output_dim)")


def _check_pair(split: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataError(f"{split}_x and {split}_y must be torch tensors")
    if x.dim() < 1 or y.dim() != 1:
        raise DataError(
            f"{split}_y must be 1-D and {split}_x at least 1-D, got {tuple(y.shape)}, {tuple(x.shape)}"
        )
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{split}_x has {x.shape[0]} samples but {split}_y has {y.shape[0]}")
    if y.dtype != torch.int64:
        raise DataError(f"{split}_y must be int64 class labels, got {y.dtype}")


def _as_index_list(name: str, indices: Sequence[Any], size: int) -> list[torch.Tensor]:
    result = []
    for client, raw in enumerate(indices):
        try:
            idx = raw.detach().cpu() if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}[{client}] is not an index array: {exc}") from exc
        if idx.dim() != 1 or not (idx.numel() == 0 or idx.dtype in _INT_DTYPES):
            raise DataError(
                f"{name}[{client}] must be a 1-D array of integers, got {idx.dtype} {tuple(idx.shape)}"
            )
        idx = idx.to(torch.int64)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
            raise DataError(f"{name}[{client}] has indices outside 0..{size - 1}")
        result.append(idx)
    return result


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
