"""``ServerAggregator``: how the server combines client models and tests the global one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.core.aggregation import WeightedState
from fedml.core.robust import create_aggregation_rule
from fedml.ml.evaluation import evaluate
from fedml.ml.trainer import load_state, to_device

if TYPE_CHECKING:
    from fedml.data import ClientData


class ServerAggregator:
    """Holds the global model; aggregates ``(sample_count, state)`` pairs and evaluates the result.

    Every runner calls, in order, ``on_before_aggregation``, ``aggregate`` and ``on_after_aggregation``
    (see ``aggregate_with_hooks``), then ``set_model_params`` and, on evaluation rounds, ``test``.
    Override any of them; the defaults are the sample-weighted mean (or the Byzantine-robust rule that
    ``defense_args`` enables) and classification accuracy.

    Parameters
    ----------
    model
        The global model.
    args
        The run's arguments (``fedml.init()``).

    """

    def __init__(self, model: nn.Module, args: Any) -> None:
        self.model = model
        self.args = args
        self.rule = create_aggregation_rule(args)

    def get_model_params(self) -> dict[str, torch.Tensor]:
        """Return a detached copy of the global model state."""
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def set_model_params(self, model_parameters: Mapping[str, torch.Tensor]) -> None:
        """Load a state into the global model (as ``load_state_dict``, which reports any mismatch)."""
        load_state(self.model, model_parameters)

    def on_before_aggregation(
        self, raw_client_model_or_grad_list: list[WeightedState]
    ) -> list[WeightedState]:
        """Inspect or transform the client updates before they are combined; returns them unchanged."""
        return raw_client_model_or_grad_list

    def aggregate(self, raw_client_model_or_grad_list: Sequence[WeightedState]) -> dict[str, torch.Tensor]:
        """Return the sample-weighted mean of the client states, or the robust rule of ``defense_args``.

        The robust rules (``fedml.core.robust``) see the current global model too, for norm clipping.
        """
        return self.rule(raw_client_model_or_grad_list, self.model.state_dict())

    def on_after_aggregation(
        self, aggregated_model_or_grad: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Inspect or transform the aggregate; returns it unchanged."""
        return aggregated_model_or_grad

    def aggregate_with_hooks(self, updates: Sequence[WeightedState]) -> dict[str, torch.Tensor]:
        """Run ``on_before_aggregation``, ``aggregate`` and ``on_after_aggregation`` in order."""
        return self.on_after_aggregation(self.aggregate(self.on_before_aggregation(list(updates))))

    def test(self, test_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Return ``{"accuracy", "loss", "num_samples"}`` of the global model on ``test_data``."""
        return evaluate(to_device(self.model, device), test_data, device)
