"""The ``synthetic(alpha, beta)`` dataset of FedProx (Li et al., 2020), generated lazily per client."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings, read_settings
from fedml.data.dataset import ClientData, FedMLTuple
from fedml.errors import DataError

INPUT_SHAPE = (60,)
"""Features per sample."""

OUTPUT_DIM = 10
"""Classes."""

TEST_CLIENTS = 100
"""Clients (a fixed, seeded sample) whose held-out samples make up the global test set."""

_STREAM = 0x5E7_7E71C
_SIZE_MEAN, _SIZE_SIGMA, _SIZE_MIN = 4.0, 2.0, 50


class SyntheticDataset(FedMLTuple):
    """FedProx's synthetic data: per-client logistic models and feature distributions from priors.

    For client ``k``: ``u_k ~ N(0, alpha)``, ``W_k, b_k ~ N(u_k, 1)``; ``B_k ~ N(0, beta)``,
    ``v_k ~ N(B_k, 1)`` (60-dim), ``x ~ N(v_k, Sigma)`` with ``Sigma = diag(j^-1.2)``, and
    ``y = argmax(softmax(W_k x + b_k))``. ``alpha`` and ``beta`` are the standard deviations of the
    priors, as in the paper's code. Client sizes follow the paper's power law, ``50 + lognormal(4, 2)``,
    capped at ``max_samples``; a fifth of each client's samples is held out as its local test set.

    Nothing is stored per client: ``local_train(k)`` regenerates client ``k``'s data from
    ``(seed, k)``, so memory grows with the clients of a round, not with ``client_num`` (only the
    int64 size of every client is kept). The global test set is the held-out samples of a fixed
    seeded sample of ``TEST_CLIENTS`` clients, built on first use.

    Parameters
    ----------
    client_num
        Number of clients.
    alpha, beta
        How much the local models (``alpha``) and the local feature distributions (``beta``) differ.
    seed
        Seeds everything; the same seed gives the same data for every client, in any order.
    batch_size
        Default batch size of the client views.
    max_samples
        Cap on the samples of one client (training and test together).

    Examples
    --------
    >>> ds = SyntheticDataset(client_num=100_000, alpha=1.0, beta=1.0, seed=0, batch_size=10)
    >>> x, y = ds.local_train(99_999).tensors()
    >>> tuple(x.shape[1:]), ds.output_dim
    ((60,), 10)

    """

    name = "synthetic"
    output_dim = OUTPUT_DIM
    input_shape = INPUT_SHAPE

    def __init__(
        self,
        client_num: int,
        alpha: float,
        beta: float,
        seed: int,
        batch_size: int,
        max_samples: int = 1000,
    ) -> None:
        if client_num < 1:
            raise DataError(f"synthetic data needs at least one client, got {client_num}")
        if alpha < 0 or beta < 0:
            raise DataError(f"synthetic_alpha and synthetic_beta must be >= 0, got {alpha}, {beta}")
        self.alpha, self.beta, self.seed = float(alpha), float(beta), int(seed)
        self.batch_size = batch_size
        self.load_seconds: float | None = None
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _STREAM]))
        sizes = rng.lognormal(_SIZE_MEAN, _SIZE_SIGMA, client_num).astype(np.int64) + _SIZE_MIN
        self.sizes = np.minimum(sizes, max_samples)
        self.test_sizes = self.sizes // 5
        chosen = rng.choice(client_num, size=min(client_num, TEST_CLIENTS), replace=False)
        self.test_clients = sorted(int(c) for c in chosen)
        self.source = f"synthetic({self.alpha:g}, {self.beta:g}) of Li et al. (2020), generated per client"
        self._sigma_sqrt = np.arange(1, INPUT_SHAPE[0] + 1, dtype=np.float64) ** -0.6
        self._test_global: ClientData | None = None

    def __repr__(self) -> str:
        return f"SyntheticDataset(alpha={self.alpha}, beta={self.beta}, clients={self.client_num})"

    @property
    def client_num(self) -> int:
        """Number of clients."""
        return len(self.sizes)

    @property
    def train_data_num(self) -> int:
        """Number of training samples over all clients."""
        return int((self.sizes - self.test_sizes).sum())

    @property
    def test_data_num(self) -> int:
        """Number of samples in the global test set."""
        return int(self.test_sizes[self.test_clients].sum())

    def client_tensors(self, client: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Generate all samples of ``client`` (training first, then held-out) from ``(seed, client)``."""
        client = self._check(client)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _STREAM, client]))
        dim, n = INPUT_SHAPE[0], int(self.sizes[client])
        u, b_mean = rng.normal(0.0, self.alpha), rng.normal(0.0, self.beta)
        weight = rng.normal(u, 1.0, (dim, OUTPUT_DIM))
        bias = rng.normal(u, 1.0, OUTPUT_DIM)
        v = rng.normal(b_mean, 1.0, dim)
        x = v + rng.standard_normal((n, dim)) * self._sigma_sqrt
        y = np.argmax(x @ weight + bias, axis=1)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64))

    def local_train(self, client: int) -> ClientData:
        """Return client ``client``'s training data, generated now."""
        x, y = self.client_tensors(client)
        return ClientData(x, y, torch.arange(self.local_sample_num(client)), self.batch_size)

    def local_test(self, client: int) -> ClientData:
        """Return client ``client``'s held-out data, generated now."""
        x, y = self.client_tensors(client)
        return ClientData(x, y, torch.arange(self.local_sample_num(client), len(y)), self.batch_size)

    def local_sample_num(self, client: int) -> int:
        """Return the number of training samples of ``client`` (no data is generated)."""
        client = self._check(client)
        return int(self.sizes[client] - self.test_sizes[client])

    @property
    def test_global(self) -> ClientData:
        """The held-out samples of the ``TEST_CLIENTS`` test clients, generated once and kept."""
        if self._test_global is None:
            parts = [self.local_test(c).tensors() for c in self.test_clients]
            x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            self._test_global = ClientData(x, y, torch.arange(len(y)), self.batch_size)
        return self._test_global

    @property
    def train_global(self) -> ClientData:
        """Every client's training data in one view; this generates all clients, so avoid it at scale."""
        parts = [self.local_train(c).tensors() for c in range(self.client_num)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return ClientData(x, y, torch.arange(len(y)), self.batch_size)

    @property
    def train_data_local_num_dict(self) -> dict[int, int]:
        """Client index -> number of local training samples (FedML name)."""
        return {i: self.local_sample_num(i) for i in range(self.client_num)}

    @property
    def train_data_local_dict(self) -> Mapping[int, ClientData]:
        """Client index -> local training data, generated on lookup (FedML name)."""
        return _LazyClients(self.client_num, self.local_train)

    @property
    def test_data_local_dict(self) -> Mapping[int, ClientData]:
        """Client index -> local test data, generated on lookup (FedML name)."""
        return _LazyClients(self.client_num, self.local_test)

    def _check(self, client: int) -> int:
        if isinstance(client, bool) or not isinstance(client, int) or not 0 <= client < self.client_num:
            raise DataError(f"client index must be an integer in 0..{self.client_num - 1}, got {client!r}")
        return client


class _LazyClients(Mapping[int, ClientData]):
    def __init__(self, count: int, make: Callable[[int], ClientData]) -> None:
        self._count, self._make = count, make

    def __getitem__(self, client: int) -> ClientData:
        if not isinstance(client, int) or not 0 <= client < self._count:
            raise KeyError(client)
        return self._make(client)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._count))

    def __len__(self) -> int:
        return self._count


def load_synthetic(args: Any) -> SyntheticDataset:
    """Build the synthetic dataset from the run's ``synthetic_*``, ``client_num_in_total``, seed and batch."""
    settings = read_settings(args, SyntheticSettings)
    return SyntheticDataset(
        client_num=args.client_num_in_total,
        alpha=settings.synthetic_alpha,
        beta=settings.synthetic_beta,
        seed=args.random_seed,
        batch_size=args.batch_size,
        max_samples=settings.synthetic_max_samples,
    )


class SyntheticSettings(ComponentSettings):
    """The synthetic dataset's keys in ``data_args``: FedProx's alpha and beta, and the client size cap."""

    section = "data_args"
    synthetic_alpha: float = Field(1.0, ge=0)
    synthetic_beta: float = Field(1.0, ge=0)
    synthetic_max_samples: int = Field(1000, ge=1)
