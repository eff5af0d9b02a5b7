"""``ClientTrainer``: what a client does with its data in one round; subclass it to customise training."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.core.sampling import client_generator
from fedml.ml.evaluation import evaluate

if TYPE_CHECKING:
    from fedml.core.algorithms import Penalty
    from fedml.data import ClientData

StepFn = Callable[[Sequence[torch.Tensor]], None]
"""Applies one optimizer step given the gradients of the trainable parameters, in order."""


class ClientTrainer:
    """Local training of one model object that is reused for every client a process simulates.

    The default is supervised classification: ``args.epochs`` passes of SGD (or Adam) with cross-entropy
    over the client's data, shuffled by a generator derived from ``(random_seed, round, client)``.
    Override ``train`` (and ``test``) for other objectives; the runner calls ``set_id``, ``set_round``,
    ``set_model_params`` and ``set_penalty`` before ``train`` and ``get_model_params`` after it.

    Parameters
    ----------
    model
        The model to train in place.
    args
        The run's arguments (``fedml.init()``).

    Notes
    -----
    SGD is applied by ``sgd_step`` with the exact operations of ``torch.optim.SGD`` (weight decay, then
    momentum with a buffer that starts fresh every round), without the optimizer object's per-step
    bookkeeping; the vectorized engine applies the same rule to many clients at once.

    """

    def __init__(self, model: nn.Module, args: Any) -> None:
        self.model = model
        self.args = args
        self.id = 0
        self.round_idx = 0
        self.penalty: Penalty | None = None
        self.penalty_anchor: Mapping[str, torch.Tensor] | None = None

    def set_id(self, trainer_id: int) -> None:
        """Set the index of the client this trainer acts for next."""
        self.id = trainer_id

    def set_round(self, round_idx: int) -> None:
        """Set the (0-based) round being trained."""
        self.round_idx = round_idx

    def set_penalty(self, penalty: Penalty | None, anchor: Mapping[str, torch.Tensor] | None) -> None:
        """Add ``penalty(params, anchor)`` to the loss of the next ``train`` calls (``None``: no penalty).

        Algorithms such as FedProx set it; a ``train`` override should add it to its loss too.
        """
        self.penalty = penalty
        self.penalty_anchor = anchor

    def get_model_params(self) -> dict[str, torch.Tensor]:
        """Return a detached copy of the model state (safe to keep after further training)."""
        return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def set_model_params(self, model_parameters: Mapping[str, torch.Tensor]) -> None:
        """Load a model state into the model (as ``load_state_dict``, which reports any mismatch)."""
        load_state(self.model, model_parameters)

    def train(self, train_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Train on ``train_data`` for ``args.epochs`` epochs; return ``{"train_loss", "num_samples"}``."""
        model = to_device(self.model, device)
        model.train()
        named = {name: p for name, p in model.named_parameters() if p.requires_grad}
        params = list(named.values())
        step = self._step_fn(params, args)
        penalty, anchor = self.penalty, self.penalty_anchor
        generator = client_generator(args.random_seed, self.round_idx, self.id)
        on_device = train_data.x.device == device
        losses: list[torch.Tensor] = []
        sizes: list[int] = []
        for _ in range(args.epochs):
            for x, y in train_data.batches(args.batch_size, generator):
                if not on_device:
                    x, y = x.to(device), y.to(device)
                loss = F.cross_entropy(model(x), y)
                if penalty is not None:
                    loss = loss + penalty(named, anchor or {})
                step(torch.autograd.grad(loss, params))
                losses.append(loss.detach())
                sizes.append(len(y))
        # One conversion at the end instead of a host sync per step; the sum is the same float64 sum.
        values = torch.stack(losses).tolist() if losses else []
        loss_sum = sum(value * n for value, n in zip(values, sizes, strict=True))
        seen = sum(sizes)
        return {"train_loss": loss_sum / seen if seen else float("nan"), "num_samples": len(train_data)}

    def test(self, test_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Return ``{"accuracy", "loss", "num_samples"}`` on ``test_data``."""
        return evaluate(self.model, test_data, device)

    def _step_fn(self, params: Sequence[torch.Tensor], args: Any) -> StepFn:
        if args.client_optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay)

            def adam_step(grads: Sequence[torch.Tensor]) -> None:
                for p, g in zip(params, grads, strict=True):
                    p.grad = g
                optimizer.step()

            return adam_step
        buffers: list[torch.Tensor | None] = [None] * len(params)
        lr, momentum, weight_decay = args.learning_rate, args.momentum, args.weight_decay

        def step(grads: Sequence[torch.Tensor]) -> None:
            sgd_step(params, grads, buffers, lr=lr, momentum=momentum, weight_decay=weight_decay)

        return step


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Return ``model`` on ``device``: moved with ``Module.to`` only if a parameter or buffer is elsewhere.

    ``Module.to`` visits every submodule and tensor even when nothing moves, a fixed cost paid every
    round by a small model's simulation.
    """
    if any(t.device != device for t in chain(model.parameters(), model.buffers())):
        model.to(device)
    return model


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``model`` in place; same effect as ``model.load_state_dict(state)``.

    When the names and shapes match exactly, the tensors are copied directly, without
    ``load_state_dict``'s per-module bookkeeping (the per-client cost of a simulation); otherwise
    ``load_state_dict`` runs and raises its usual error.
    """
    targets = model.state_dict(keep_vars=True)
    if targets.keys() != state.keys() or any(t.shape != state[k].shape for k, t in targets.items()):
        model.load_state_dict(state)
        return
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(state[name])


@torch.no_grad()
def sgd_step(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    buffers: list[torch.Tensor | None],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> None:
    """Apply one step of ``torch.optim.SGD`` (no dampening, no Nesterov) in place, with the same operations.

    Parameters
    ----------
    params
        Parameters, updated in place; for stacked parameters every client row is updated.
    grads
        Their gradients.
    buffers
        Momentum buffers, one per parameter, all ``None`` before the first step (filled in here).
    lr, momentum, weight_decay
        As ``torch.optim.SGD``.

    """
    # One ``_foreach`` call per operation instead of one call per parameter (torch.optim.SGD's
    # ``foreach`` path): the same elementwise arithmetic, a fraction of the dispatch per step.
    params, grads = list(params), list(grads)
    if weight_decay != 0:
        grads = list(torch._foreach_add(grads, params, alpha=weight_decay))
    if momentum != 0:
        if any(buf is None for buf in buffers):
            buffers[:] = [grad.detach().clone() for grad in grads]
        else:
            current = [buf for buf in buffers if buf is not None]
            torch._foreach_mul_(current, momentum)
            torch._foreach_add_(current, grads, alpha=1)
        grads = [buf for buf in buffers if buf is not None]
    torch._foreach_add_(params, grads, alpha=-lr)
