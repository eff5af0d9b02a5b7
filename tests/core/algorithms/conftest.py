"""A real ``ServerAggregator`` in a ``RoundContext`` for the server rules, and hand-made updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from fedml.core.algorithms import RoundContext, Update
from fedml.ml import ServerAggregator


@pytest.fixture
def make_ctx(make_args) -> Callable[..., RoundContext]:
    """Build a round context from argument overrides, with a real aggregator and no trainer."""

    def make(round_idx: int = 0, aggregator: type[ServerAggregator] = ServerAggregator, **overrides: Any):
        args = make_args(**overrides)
        return RoundContext(
            round_idx, args, torch.device("cpu"), None, aggregator(torch.nn.Linear(2, 1), args)
        )

    return make


def update(client_idx: int, weight: float, metrics: dict[str, float] | None = None, **state: Any) -> Update:
    """An update of ``client_idx`` whose state holds the given values as tensors."""
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in state.items()}
    return Update(client_idx, float(weight), tensors, dict(metrics or {}))
