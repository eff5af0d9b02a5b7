"""Vectorized client training: the clients of a round train in lock-step as one ``torch.func`` step.

Every trainable parameter is stacked along a new first dimension, one row per client, and one step of
``vmap(grad(loss))`` trains all of them on their own mini-batches. Each client's batches come from the
same seeded shuffle (``client_generator``) as in the sequential path; clients with fewer samples end
earlier (clients are sorted by their number of steps, so the clients still training are a prefix of the
stack) and partial batches are masked, so every client gets the update the sequential path computes
for it, up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F  # noqa: N812

from fedml.core.algorithms import LocalObjective, Update
from fedml.core.sampling import client_generator
from fedml.ml.trainer import sgd_step
from fedml.simulation.batched_forward import batched_forward, convolutional, unsupported_layer

if TYPE_CHECKING:
    from fedml.data import ClientData

STACK_BYTES = 1 << 29
"""Bound on the bytes of stacked parameters, gradients and momentum of one group of clients (512 MiB)."""

_RANDOM_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def unsupported_reason(model: nn.Module, args: Any, objective: LocalObjective | None) -> str | None:
    """Return why the vectorized engine cannot train this run, or ``None`` if it can.

    Parameters
    ----------
    model
        The model every client trains.
    args
        The run's arguments (``client_optimizer``).
    objective
        The algorithm's ``local_objective()``; ``None`` when its client update is arbitrary code.

    """
    if objective is None:
        return "the algorithm's client update has no functional form (local_objective() is None)"
    if args.client_optimizer != "sgd":
        return f"client_optimizer {args.client_optimizer!r} is only trained one client at a time"
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"the model has buffers updated in place during training ({', '.join(buffers[:3])})"
    random_layers = [type(m).__name__ for m in model.modules() if isinstance(m, _RANDOM_LAYERS)]
    if random_layers:
        return f"the model draws random numbers in training ({random_layers[0]})"
    return None


def probe(model: nn.Module, sample: torch.Tensor, objective: LocalObjective) -> str | None:
    """Run one vectorized step on ``sample`` (one input of the dataset); return the error if it fails."""
    trainer = _StepFunction(model, objective)
    params = {name: p.detach().unsqueeze(0).repeat(2, *([1] * p.dim())) for name, p in _trainable(model)}
    x = sample.unsqueeze(0).unsqueeze(0).expand(2, 1, *sample.shape)
    y = torch.zeros(2, 1, dtype=torch.int64, device=sample.device)
    mask = torch.ones(2, 1, device=sample.device)
    anchor = {name: p.detach() for name, p in _trainable(model)}
    try:
        trainer(params, x, y, mask, anchor)
    except Exception as exc:  # any failure means "train one by one", and the log says why
        return f"vmap cannot run the model ({type(exc).__name__}: {exc})"
    return None


class VectorizedTrainer:
    """Trains the clients of a round as one batched computation with the default SGD rule.

    Parameters
    ----------
    model
        The model whose architecture every client trains (its parameters are not changed).
    args
        The run's arguments: ``epochs``, ``batch_size``, ``learning_rate``, ``momentum``,
        ``weight_decay``, ``random_seed``.
    device
        Where the stacked parameters and batches live.
    objective
        The algorithm's client rule (its penalty, if any, is added to every client's loss).

    """

    def __init__(self, model: nn.Module, args: Any, device: torch.device, objective: LocalObjective) -> None:
        self.model = model
        self.args = args
        self.device = device
        self.step_fn = _StepFunction(model, objective)
        param_bytes = sum(p.numel() * p.element_size() for _, p in _trainable(model))
        self.group_size = max(1, STACK_BYTES // max(1, 3 * param_bytes))

    def train_round(
        self,
        round_idx: int,
        global_state: Mapping[str, torch.Tensor],
        clients: Sequence[tuple[int, ClientData]],
    ) -> list[Update]:
        """Train ``(client index, data)`` pairs from ``global_state``; return their updates in input order."""
        self.model.load_state_dict(global_state)
        self.model.to(self.device).train()
        batch = self.args.batch_size
        steps = [self.args.epochs * math.ceil(len(data) / batch) for _, data in clients]
        order = sorted(range(len(clients)), key=lambda i: -steps[i])
        updates: dict[int, Update] = {}
        for i in order:
            if steps[i] == 0:
                idx = clients[i][0]
                state = {k: v.detach().clone() for k, v in global_state.items()}
                updates[i] = Update(idx, 0.0, state, {"train_loss": float("nan"), "num_samples": 0})
        trained = [i for i in order if steps[i] > 0]
        for start in range(0, len(trained), self.group_size):
            group = trained[start : start + self.group_size]
            trained_group = self._train_group(round_idx, global_state, [clients[i] for i in group])
            updates.update(zip(group, trained_group, strict=True))
        return [updates[i] for i in range(len(clients))]

    def _train_group(
        self,
        round_idx: int,
        global_state: Mapping[str, torch.Tensor],
        clients: Sequence[tuple[int, ClientData]],
    ) -> list[Update]:
        args, device = self.args, self.device
        xs, ys, rows, mask = _batches(clients, args.epochs, args.batch_size, args.random_seed, round_idx)
        xs, ys, rows, mask = xs.to(device), ys.to(device), rows.to(device), mask.to(device)
        counts = mask.sum(dim=2)
        active = (counts > 0).sum(dim=0).tolist()
        anchor = {name: global_state[name].to(device) for name, _ in _trainable(self.model)}
        stacked = {name: t.unsqueeze(0).repeat(len(clients), *([1] * t.dim())) for name, t in anchor.items()}
        names = list(stacked)
        buffers: list[torch.Tensor | None] = [None] * len(names)
        loss_sum = torch.zeros(len(clients), dtype=torch.float64, device=device)
        for t, k in enumerate(active):
            params = {name: stacked[name][:k] for name in names}
            batch_rows = rows[:k, t]
            grads, loss = self.step_fn(params, xs[batch_rows], ys[batch_rows], mask[:k, t], anchor)
            loss_sum[:k] += loss.double() * counts[:k, t]
            views = [None if b is None else b[:k] for b in buffers]
            sgd_step(
                [params[name] for name in names],
                [grads[name] for name in names],
                views,
                lr=args.learning_rate,
                momentum=args.momentum,
                weight_decay=args.weight_decay,
            )
            if t == 0:
                buffers = views
        seen = counts.sum(dim=1).double()
        train_loss = (loss_sum / seen).tolist()
        frozen = [k for k in global_state if k not in stacked]
        updates = []
        for i, (client_idx, data) in enumerate(clients):
            # Rows of the stacked parameters are each client's own tensors: views, not copies.
            state = {k: global_state[k].detach().clone() for k in frozen}
            state.update({name: stacked[name][i] for name in names})
            metrics = {"train_loss": train_loss[i], "num_samples": len(data)}
            updates.append(Update(client_idx, float(len(data)), state, metrics))
        return updates


class _StepFunction:
    """Per-client gradients and losses of one masked mini-batch for stacked parameters.

    Only the forward pass is batched; the losses of the clients are independent, so ordinary autograd
    on their sum gives each client's gradient in its own row, without the per-step cost of
    ``vmap(grad(...))``. A convolutional model whose every layer has a batched implementation runs
    through ``batched_forward`` (clients folded into the channels, one grouped convolution per layer),
    which measured faster on a CPU than ``vmap``; any other model runs through ``vmap(functional_call)``.
    """

    def __init__(self, model: nn.Module, objective: LocalObjective) -> None:
        self.model = model
        self.penalty = objective.penalty
        self.forward_kind = forward_kind(model)
        # Reused gradient buffers of the folded forward: the gradients of one call are consumed (the
        # SGD step) before the next call overwrites them.
        self._workspace: dict[str, torch.Tensor] = {}
        self._forward: Callable[..., torch.Tensor] = (
            partial(batched_forward, model, workspace=self._workspace)
            if self.forward_kind == "folded"
            else vmap(self._forward_one, in_dims=(0, 0))
        )
        self._penalty = vmap(objective.penalty, in_dims=(0, None)) if objective.penalty else None

    def __call__(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        mask: torch.Tensor,
        anchor: Mapping[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
        with torch.enable_grad():
            logits = self._forward(leaves, x)
            per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            losses = (per_sample.view_as(mask) * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)
            if self._penalty is not None:
                losses = losses + self._penalty(leaves, anchor)
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads, strict=True)), losses.detach()

    def _forward_one(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, params, (x,))


def forward_kind(model: nn.Module) -> str:
    """Return how the vectorized engine runs ``model``'s forward pass: ``"folded"`` or ``"vmap"``.

    ``"folded"`` (``fedml.simulation.batched_forward``) for a model with convolutions or GroupNorm whose
    every module has a batched implementation; ``"vmap"`` for everything else, fully connected models
    included (``vmap`` already turns their layers into one batched matrix product).
    """
    return "folded" if convolutional(model) and unsupported_layer(model) is None else "vmap"


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _batches(
    clients: Sequence[tuple[int, ClientData]], epochs: int, batch: int, seed: int, round_idx: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the group's samples into one pool and lay out each client's shuffled batches over steps.

    Returns the pooled inputs and labels, ``rows[client, step, slot]`` (indices into the pool) and
    ``mask[client, step, slot]`` (1.0 where the slot holds a real sample).
    """
    offsets, offset = [], 0
    for _, data in clients:
        offsets.append(offset)
        offset += len(data)
    first = clients[0][1]
    if all(data.x is first.x and data.y is first.y for _, data in clients):
        # Index views into the same tensors: one gather for the whole group.
        pool = torch.cat([data.indices for _, data in clients])
        pooled_x, pooled_y = first.x[pool], first.y[pool]
    else:
        parts = [data.tensors() for _, data in clients]
        pooled_x, pooled_y = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
    # A batch never holds more than a client's data: a huge batch_size must not size the buffers.
    batch = min(batch, max(len(data) for _, data in clients))
    max_steps = max(epochs * math.ceil(len(data) / batch) for _, data in clients)
    # Each client draws its epochs' permutations in the order ClientData.batches does; sample j of
    # epoch e then sits at step e * steps_per_epoch + j // batch, slot j % batch. One scatter lays out
    # every (client, epoch) segment at once.
    values, owners, epoch_of, lengths = [], [], [], []
    for i, ((client_idx, data), start) in enumerate(zip(clients, offsets, strict=True)):
        generator = client_generator(seed, round_idx, client_idx)
        for epoch in range(epochs):
            values.append(torch.randperm(len(data), generator=generator) + start)
            owners.append(i)
            epoch_of.append(epoch)
            lengths.append(len(data))
    sizes = torch.tensor(lengths)
    segment_start = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(int(sizes.sum())) - torch.repeat_interleave(segment_start, sizes)
    per_epoch = (sizes + batch - 1) // batch
    owner = torch.repeat_interleave(torch.tensor(owners), sizes)
    step = torch.repeat_interleave(torch.tensor(epoch_of) * per_epoch, sizes) + position // batch
    slot = position % batch
    rows = torch.zeros(len(clients), max_steps, batch, dtype=torch.int64)
    mask = torch.zeros(len(clients), max_steps, batch)
    rows[owner, step, slot] = torch.cat(values)
    mask[owner, step, slot] = 1.0
    return pooled_x, pooled_y, rows, mask
