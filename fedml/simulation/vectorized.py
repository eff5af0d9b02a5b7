"""Vectorized client training: the clients of a round train in lock-step, one batched step for all.

Every trainable parameter is stacked along a new first dimension, one row per client, and one step
trains all of them on their own mini-batches: the gradient written out for fully connected models
(``closed_form``), the folded forward and autograd for the other built-in models
(``batched_forward``), ``vmap`` for any other model. Each client's batches come from the
same seeded shuffle (``client_generator``) as in the sequential path; clients with fewer samples end
earlier (clients are sorted by their number of steps, so the clients still training are a prefix of the
stack) and partial batches are masked, so every client gets the update the sequential path computes
for it, up to float rounding.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn
from torch.func import vmap
from torch.nn import functional as F  # noqa: N812

from fedml.core.algorithms import LocalObjective, Update
from fedml.core.sampling import client_seed
from fedml.ml.trainer import load_state, sgd_step, to_device
from fedml.simulation.batched_forward import batched_forward, unsupported_layer
from fedml.simulation.closed_form import ClosedFormGradient, chain_of

if TYPE_CHECKING:
    from fedml.data import ClientData

STACK_BYTES = 1 << 29
"""Bound on the bytes of stacked parameters, gradients and momentum of one group of clients (512 MiB)."""

GATHER_BYTES = 1 << 22
"""Bytes of inputs gathered at once for the next steps of a group (4 MiB, cache-sized): one gather feeds
many steps, and a chunk's memory is reused rather than faulted in afresh."""

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
        load_state(self.model, global_state)
        to_device(self.model, self.device).train()
        batch, epochs = self.args.batch_size, self.args.epochs  # read once: a config read is a lookup
        steps = [epochs * math.ceil(len(data) / batch) for _, data in clients]
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
        layout = _Layout(clients, args.epochs, args.batch_size, args.random_seed, round_idx, device)
        anchor = {name: global_state[name].to(device) for name, _ in _trainable(self.model)}
        names = list(anchor)
        stacked = [t.unsqueeze(0).repeat(len(clients), *([1] * t.dim())) for t in anchor.values()]
        buffers: list[torch.Tensor | None] = [None] * len(names)
        losses: list[torch.Tensor] = []
        rule = {"lr": args.learning_rate, "momentum": args.momentum, "weight_decay": args.weight_decay}
        # Everything the loop needs is laid out before it: a step slices, runs the model and updates in
        # place; views are rebuilt only when a client finishes (the stack's prefix shrinks).
        # The prefix views are autograd leaves that share the stack's storage and version counter, so
        # SGD updates them in place after each backward and the next step reads the new values.
        width = -1
        params: list[torch.Tensor] = []
        named: dict[str, torch.Tensor] = {}
        views: list[torch.Tensor | None] = []
        for t, k in enumerate(layout.active):
            if k != width:
                width = k
                params = [p[:k].detach().requires_grad_() for p in stacked]
                named = dict(zip(names, params, strict=True))
                views = [None if b is None else b[:k] for b in buffers]
            x, y, weight = layout.step(t, k)
            losses.append(self.step_fn.train_step(named, x, y, weight, anchor, views, rule))
            if t == 0:
                buffers = views
        train_loss = layout.mean_losses(losses)
        frozen = [k for k in global_state if k not in anchor]
        # Rows of the stacked parameters are each client's own tensors: views, not copies.
        rows = list(zip(*(p.unbind(0) for p in stacked), strict=True))
        updates = []
        for i, ((client_idx, _), size) in enumerate(zip(clients, layout.sizes, strict=True)):
            state = {k: global_state[k].detach().clone() for k in frozen}
            state.update(zip(names, rows[i], strict=True))
            metrics = {"train_loss": train_loss[i], "num_samples": size}
            updates.append(Update(client_idx, float(size), state, metrics))
        return updates


class _StepFunction:
    """Per-client gradients and losses of one weighted mini-batch for stacked parameters.

    A sample's weight is 1 / (its client's batch size), 0 in the padding of a partial batch, so each
    client's loss is the mean over its real samples.

    Only the forward pass is batched; the losses of the clients are independent, so ordinary autograd
    on their sum gives each client's gradient in its own row, without the per-step cost of
    ``vmap(grad(...))``. A model whose every layer has a batched implementation runs through
    ``batched_forward`` (clients folded into the channels: one grouped convolution or batched matrix
    product per layer), which measured faster on a CPU than ``vmap``; any other model runs through
    ``vmap`` with the clients' tensors in the model's parameter slots. A fully connected model
    (``fedml.simulation.closed_form``) skips autograd: its gradient is written out, and autograd
    differentiates only the algorithm's penalty, if it has one.
    """

    def __init__(self, model: nn.Module, objective: LocalObjective) -> None:
        self.model = model
        self.penalty = objective.penalty
        self.forward_kind = forward_kind(model)
        chain = chain_of(model) if self.forward_kind == "closed" else None
        self._closed = ClosedFormGradient(chain) if chain is not None else None
        # Reused gradient buffers of the folded forward: the gradients of one call are consumed (the
        # SGD step) before the next call overwrites them.
        self._workspace: dict[str, torch.Tensor] = {}
        self._forward: Callable[..., torch.Tensor] = (
            partial(batched_forward, model, workspace=self._workspace)
            if self.forward_kind != "vmap"
            else vmap(self._forward_one, in_dims=(0, 0))
        )
        self._slots = _parameter_slots(model)
        self._penalty = vmap(objective.penalty, in_dims=(0, None)) if objective.penalty else None

    def __call__(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        anchor: Mapping[str, torch.Tensor],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self._closed is not None:
            grads, losses = self._closed({name: p.detach() for name, p in params.items()}, x, y, weight)
            if self._penalty is not None:
                losses = _add_penalty(self._penalty, grads, losses, params, anchor)
            return grads, losses
        leaves = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in params.items()}
        with torch.enable_grad():
            logits = self._forward(leaves, x)
            per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
            # The masked mean as one product and sum: ``weight`` is the mask over the batch's size.
            losses = (per_sample.view_as(weight) * weight).sum(dim=1)
            if self._penalty is not None:
                losses = losses + self._penalty(leaves, anchor)
            gradients = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, gradients, strict=True)), losses.detach()

    def train_step(
        self,
        params: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        anchor: Mapping[str, torch.Tensor],
        buffers: list[torch.Tensor | None],
        rule: Mapping[str, float],
    ) -> torch.Tensor:
        """Take one SGD step (``rule``: ``lr``, ``momentum``, ``weight_decay``) of every client in place.

        Returns the clients' losses before the step. ``buffers`` are the momentum buffers, as
        ``sgd_step``'s. A written-out gradient with plain SGD and no penalty (FedAvg's default) goes
        straight into the parameters (``ClosedFormGradient.descend``); everything else computes the
        gradients, then ``sgd_step`` applies them.
        """
        plain_sgd = not rule["momentum"] and not rule["weight_decay"]
        if self._closed is not None and self._penalty is None and plain_sgd:
            with torch.no_grad():
                return self._closed.descend(params, x, y, weight, rule["lr"])
        grads, losses = self(params, x, y, weight, anchor)
        sgd_step(list(params.values()), [grads[name] for name in params], buffers, **rule)
        return losses

    def _forward_one(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        # What functional_call does, without its per-call checks (a fifth of a small model's step):
        # the client's tensors take the parameters' places for this call, then the originals return.
        saved: list[tuple[nn.Module, str, nn.Parameter | None]] = []
        try:
            for name, tensor in params.items():
                for module, attr in self._slots[name]:
                    saved.append((module, attr, module._parameters[attr]))
                    module._parameters[attr] = cast(nn.Parameter, tensor)
            return self.model(x)
        finally:
            for module, attr, original in reversed(saved):
                module._parameters[attr] = original


def _add_penalty(
    penalty: Callable[..., torch.Tensor],
    grads: dict[str, torch.Tensor],
    losses: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    anchor: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Add the gradients of ``penalty`` (batched over clients) to ``grads``; return ``losses`` plus it.

    The algorithm's penalty is arbitrary code: autograd differentiates it, and only it.
    """
    leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
    with torch.enable_grad():
        penalties = penalty(leaves, anchor)
        extra = torch.autograd.grad(penalties.sum(), list(leaves.values()), allow_unused=True)
    for name, more in zip(leaves, extra, strict=True):
        if more is not None:
            grads[name] = grads[name] + more
    return losses + penalties.detach()


def forward_kind(model: nn.Module) -> str:
    """Return how the vectorized engine runs ``model``'s step: ``"closed"``, ``"folded"`` or ``"vmap"``.

    ``"closed"`` (``fedml.simulation.closed_form``) for the built-in fully connected models (lr,
    mlp), whose gradient is written out without autograd: measured faster again than their folded
    forward with autograd.
    ``"folded"`` (``fedml.simulation.batched_forward``) for any other model whose every module has a
    batched implementation (the built-in cnn, ResNet and MobileNetV2 models); ``"vmap"`` for anything
    else. The folded forward measured faster on a CPU than ``vmap`` for all of them (for lr and mlp,
    before their gradient was written out, 0.7-0.85x ``vmap``'s time per round).
    """
    if chain_of(model) is not None:
        return "closed"
    return "folded" if unsupported_layer(model) is None else "vmap"


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _parameter_slots(model: nn.Module) -> dict[str, list[tuple[nn.Module, str]]]:
    """Return, per trainable parameter's name, every ``(module, attribute)`` holding it (tied ones too)."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    seen: set[tuple[int, str]] = set()
    for _, module in model.named_modules(remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None and (id(module), attr) not in seen:
                seen.add((id(module), attr))
                places.setdefault(id(param), []).append((module, attr))
    return {name: places[id(param)] for name, param in _trainable(model)}


class _Layout:
    """A group's batches laid out over lock-step steps, and the gathers that feed each step.

    Each client draws its epochs' permutations in the order ``ClientData.batches`` does; sample ``j``
    of epoch ``e`` then sits at step ``e * steps_per_epoch + j // batch``, slot ``j % batch``. One
    scatter lays out every (client, epoch) segment at once. Inputs are gathered ``GATHER_BYTES`` at a
    time for the clients still training, so a step reads a contiguous slice instead of indexing.

    Attributes
    ----------
    active
        How many clients (a prefix of the group) train at each step; plain ints, so the loop never
        asks the device.
    sizes
        Each client's number of samples, in the group's order.

    """

    def __init__(
        self,
        clients: Sequence[tuple[int, ClientData]],
        epochs: int,
        batch: int,
        seed: int,
        round_idx: int,
        device: torch.device,
    ) -> None:
        self.sizes = sizes_of = [len(data) for _, data in clients]
        first = clients[0][1]
        if all(data.x is first.x and data.y is first.y for _, data in clients):
            # Index views into the same tensors: steps gather straight from them, with no pooled copy.
            source = torch.cat([data.indices for _, data in clients])
            self.x, self.y = first.x, first.y
        else:
            parts = [data.tensors() for _, data in clients]
            source = None
            self.x, self.y = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
        # Samples as rows of a matrix: ``index_select`` gathers them about 3x faster than indexing.
        self.shape = tuple(self.x.shape[1:])
        self._flat = self.x.reshape(len(self.x), -1)
        # A batch never holds more than a client's data: a huge batch_size must not size the buffers.
        batch = min(batch, max(sizes_of))
        per_client = [epochs * math.ceil(n / batch) for n in sizes_of]
        steps = max(per_client)
        finishing = Counter(per_client)
        self.active, training = [], len(clients)
        for t in range(steps):
            training -= finishing.get(t, 0)
            self.active.append(training)
        # One generator reseeded per client: the same draws as ``client_generator``'s, made cheaper.
        generator = torch.Generator()
        values: list[torch.Tensor] = []
        # Per (client, epoch) segment, in that order: its length, its start in the pool, its first
        # place in the step-major layout, and its client's first sample in ``source`` or the pool.
        lengths: list[int] = []
        segments: list[tuple[int, int, int]] = []
        clients_n, pool, first_sample = len(clients), 0, 0
        for i, ((client_idx, _), n) in enumerate(zip(clients, sizes_of, strict=True)):
            generator.manual_seed(client_seed(seed, round_idx, client_idx))
            per_epoch = math.ceil(n / batch)
            for epoch in range(epochs):
                values.append(torch.randperm(n, generator=generator))
                lengths.append(n)
                segments.append((pool, (epoch * per_epoch * clients_n + i) * batch, first_sample))
                pool += n
            first_sample += n
        # The index arithmetic runs in NumPy: on a round's few thousand indices a NumPy operation costs
        # about a microsecond, a torch one several (its dispatch), and the layout is a few dozen of them.
        per_sample = np.repeat(np.array(segments, dtype=np.int64), lengths, axis=0)
        start, place, offset = per_sample.T
        position = np.arange(pool) - start
        # Sample j of its segment sits at step (epoch * per_epoch + j // batch), slot j % batch.
        flat = place + (position // batch) * (clients_n * batch) + position % batch
        pooled = torch.cat(values).numpy() + offset
        # Step-major, so the clients of one step are contiguous.
        rows = np.zeros((steps, clients_n, batch), dtype=np.int64)
        mask = np.zeros((steps, clients_n, batch), dtype=np.float32)
        rows.reshape(-1)[flat] = pooled if source is None else source.cpu().numpy()[pooled]
        mask.reshape(-1)[flat] = 1.0
        counts = mask.sum(axis=2)
        self.counts = counts
        self.rows = torch.from_numpy(rows).to(self.x.device)
        weight = torch.from_numpy(mask / np.maximum(counts, 1.0)[:, :, None])
        self._weights = weight.to(device=device, dtype=torch.get_default_dtype()).unbind(0)
        self.device = device
        step_bytes = self._flat.shape[1] * self.x.element_size() * batch * len(clients)
        self.chunk = max(1, GATHER_BYTES // max(1, step_bytes))
        gathered = min(steps, self.chunk) * len(clients) * batch
        self._x_buffer = self._flat.new_empty(gathered, self._flat.shape[1])
        self._y_buffer = self.y.new_empty(gathered)
        self._start = self._end = 0
        self._xs: Sequence[torch.Tensor] = ()
        self._ys: Sequence[torch.Tensor] = ()

    def step(self, t: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return step ``t``'s inputs, labels and sample weights for its ``k`` active clients."""
        if t >= self._end:
            # Steps are asked in order and ``active`` never grows, so step t's k bounds the chunk.
            self._start, self._end = t, t + self.chunk
            rows = self.rows[t : t + self.chunk, :k]
            flat = rows.flatten()
            # Into buffers kept for the group: a fresh 4 MiB tensor per chunk costs page faults.
            x = torch.index_select(self._flat, 0, flat, out=self._x_buffer[: len(flat)])
            y = torch.index_select(self.y, 0, flat, out=self._y_buffer[: len(flat)])
            # Each step's views made at once: a step then slices only where clients have finished.
            self._xs = x.view(*rows.shape, *self.shape).to(self.device, non_blocking=True).unbind(0)
            self._ys = y.view(rows.shape).to(self.device, non_blocking=True).unbind(0)
        x, y, weight = self._xs[t - self._start], self._ys[t - self._start], self._weights[t]
        # ``shape[0]``, not ``len``: a tensor's ``__len__`` is Python code, and this runs every step.
        if x.shape[0] > k:
            x, y = x[:k], y[:k]
        return x, y, weight if weight.shape[0] == k else weight[:k]

    def mean_losses(self, losses: Sequence[torch.Tensor]) -> list[float]:
        """Return each client's mean training loss (float64) from the per-step losses of its prefix."""
        counts = self.counts.astype(np.float64)
        # A client trains at step t exactly where its count is positive, and in the same row-major
        # order as the losses were appended (the active clients are a prefix of every step).
        trained = counts > 0
        weighted = np.zeros_like(counts)
        weighted[trained] = torch.cat(list(losses)).cpu().double().numpy() * counts[trained]
        return (weighted.sum(axis=0) / counts.sum(axis=0)).tolist()
