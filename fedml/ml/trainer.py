"""``ClientTrainer``: what a client does with its data in one round; subclass it to customise training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.core.sampling import client_generator
from fedml.ml.evaluation import evaluate

if TYPE_CHECKING:
    from fedml.data import ClientData


class ClientTrainer:
    """Local training of one model object that is reused for every client a process simulates.

    The default is supervised classification: ``args.epochs`` passes of SGD (or Adam) with cross-entropy
    over the client's data, shuffled by a generator derived from ``(random_seed, round, client)``.
    Override ``train`` (and ``test``) for other objectives; the runner calls ``set_id``, ``set_round``
    and ``set_model_params`` before ``train`` and ``get_model_params`` after it.

    Parameters
    ----------
    model
        The model to train in place.
    args
        The run's arguments (``fedml.init()``).

    """

    def __init__(self, model: nn.Module, args: Any) -> None:
        self.model = model
        self.args = args
        self.id = 0
        self.round_idx = 0

    def set_id(self, trainer_id: int) -> None:
        """Set the index of the client this trainer acts for next."""
        self.id = trainer_id

    def set_round(self, round_idx: int) -> None:
        """Set the (0-based) round being trained."""
        self.round_idx = round_idx

    def get_model_params(self) -> dict[str, torch.Tensor]:
        """Return a detached copy of the model state (safe to keep after further training)."""
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def set_model_params(self, model_parameters: Mapping[str, torch.Tensor]) -> None:
        """Load a model state into the model."""
        self.model.load_state_dict(model_parameters)

    def train(self, train_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Train on ``train_data`` for ``args.epochs`` epochs; return ``{"train_loss", "num_samples"}``."""
        model = self.model.to(device)
        model.train()
        optimizer = self._optimizer(args)
        generator = client_generator(args.random_seed, self.round_idx, self.id)
        loss_sum, seen = 0.0, 0
        for _ in range(args.epochs):
            for x, y in train_data.batches(args.batch_size, generator):
                x, y = x.to(device), y.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(y)
                seen += len(y)
        return {"train_loss": loss_sum / seen if seen else float("nan"), "num_samples": len(train_data)}

    def test(self, test_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Return ``{"accuracy", "loss", "num_samples"}`` on ``test_data``."""
        return evaluate(self.model, test_data, device)

    def _optimizer(self, args: Any) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if args.client_optimizer == "adam":
            return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay)
        return torch.optim.SGD(
            params, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay
        )
