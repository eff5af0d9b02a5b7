"""Per-client gradients written out for fully connected models: one lock-step step without autograd.

For a chain of linear layers and ReLUs trained with cross-entropy (the built-in ``lr`` and ``mlp``)
the gradient of every client's weighted mini-batch loss is a few batched matrix products:

- forward: ``h = x @ W^T + b`` per client (one ``baddbmm`` over the clients), ReLU between layers;
- the loss's gradient at the logits: ``weight * (softmax(logits) - onehot(y))``;
- backward: ``dW = g^T @ h_in``, ``db = sum(g)``, ``g = (g @ W) * (h_in > 0)`` for the layer below.

On a small model autograd's bookkeeping (building the graph, the engine's queue, wrapping each
gradient) costs more than this arithmetic; written out, a W1 step (10 clients, batch 10, MNIST
logistic regression) measured about half the folded forward's step with autograd (197 against
411 µs, docs/performance.md). The numbers are the ones autograd computes, up to float rounding.

Only exact registered types are accepted (``CHAINS``): a subclass may override ``forward``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.ml.functional import log_softmax_last
from fedml.model.linear import MLP, LogisticRegression
from fedml.simulation.batched_forward import reused_buffer, unsupported_layer

Layer = tuple[str, nn.Module]
"""A layer of a chain: its parameters' name prefix in the model (ending in a dot) and the module."""

CHAINS: dict[type[nn.Module], Callable[[Any], list[Layer]]] = {
    LogisticRegression: lambda model: [("", nn.Flatten()), ("linear.", model.linear)],
    MLP: lambda model: [(f"layers.{name}.", child) for name, child in model.layers.named_children()],
}
"""Model type -> its layers in order; each layer is an ``nn.Flatten``, ``nn.Linear`` or ``nn.ReLU``."""

_LAYER_TYPES = (nn.Flatten, nn.Linear, nn.ReLU)


def chain_of(model: nn.Module) -> list[Layer] | None:
    """Return ``model``'s layers if its gradient can be written out, else ``None``.

    Examples
    --------
    >>> [prefix for prefix, _ in chain_of(LogisticRegression((4,), 3))]
    ['', 'linear.']
    >>> chain_of(nn.Sequential(nn.Linear(4, 3))) is None
    True

    """
    build = CHAINS.get(type(model))
    # unsupported_layer also refuses hooks, frozen weights and biases, and other flattening.
    if build is None or unsupported_layer(model) is not None:
        return None
    layers = build(model)
    if any(type(module) not in _LAYER_TYPES for _, module in layers) or type(layers[-1][1]) is not nn.Linear:
        return None
    return layers


class ClosedFormGradient:
    """Every client's gradients and losses of one weighted mini-batch for a chain of ``chain_of``.

    Parameters
    ----------
    layers
        The chain, as ``chain_of`` returns it.

    Gradients of weights are written into buffers kept between calls (a fresh tensor of a few MB per
    step costs page faults): a call's gradients are valid until the next call.

    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self._buffers: dict[str, torch.Tensor] = {}

    def __call__(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Return ``({name: gradient [K, ...]}, losses [K])`` for stacked ``params``, ``x`` ``[K, B, ...]``.

        ``weight`` ``[K, B]`` scales each sample's cross-entropy (its client's ``1 / batch``, ``0`` in
        padding); client ``k``'s loss is ``sum_b weight[k, b] * CE(logits[k, b], y[k, b])``.
        """
        grads: dict[str, torch.Tensor] = {}
        return grads, self._backward(params, x, y, weight, grads)

    def descend(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        lr: float,
    ) -> torch.Tensor:
        """Apply one plain SGD step (``param -= lr * gradient``) to ``params`` in place; return the losses.

        The arguments are ``__call__``'s. Each weight's gradient goes straight into the weight (one
        ``baddbmm_``, the gradient's product scaled by ``-lr`` and added), so it is never written out
        and read back; the gradient passed to the layer below is computed from the weight before its
        update. Only for SGD without momentum and weight decay, which need the gradient itself.
        """
        return self._backward(params, x, y, weight, None, lr)

    def _backward(
        self,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        weight: torch.Tensor,
        grads: dict[str, torch.Tensor] | None,
        lr: float = 0.0,
    ) -> torch.Tensor:
        """Fill ``grads`` with the gradients, or with ``grads=None`` descend by ``lr``; return the losses."""
        clients, batch = x.shape[:2]
        h = x.reshape(clients, batch, -1)
        saved: list[torch.Tensor] = []
        for prefix, module in self.layers:
            if type(module) is nn.Linear:
                saved.append(h)
                h = self._linear(params, prefix, h)
            elif type(module) is nn.ReLU:
                h = F.relu(h)
        log_p = log_softmax_last(h)
        labels, scale = y.unsqueeze(2), weight.unsqueeze(2)
        losses = -(log_p.gather(2, labels) * scale).sum(dim=(1, 2))
        # d loss / d logits = weight * (softmax - onehot), built in place in the softmax's tensor.
        g = log_p.exp_()
        g.scatter_add_(2, labels, torch.full(labels.shape, -1.0, dtype=g.dtype, device=g.device))
        g.mul_(scale)
        above = h  # the input of the linear layer last differentiated (the chain ends in one)
        for prefix, module in reversed(self.layers):
            if type(module) is nn.Linear:
                above = saved.pop()
                w_name, b_name = f"{prefix}weight", f"{prefix}bias"
                w = params[w_name]
                below = torch.bmm(g, w) if saved else None  # from the weight before any update
                if grads is None:
                    w.baddbmm_(g.transpose(1, 2), above, alpha=-lr)
                    if module.bias is not None:
                        params[b_name].sub_(g.sum(dim=1), alpha=lr)
                else:
                    buffer = reused_buffer(self._buffers, w_name, w)
                    grads[w_name] = torch.bmm(g.transpose(1, 2), above, out=buffer)
                    if module.bias is not None:
                        grads[b_name] = g.sum(dim=1)
                if below is not None:
                    g = below
            elif type(module) is nn.ReLU and saved:
                # ReLU's derivative is 0 where its output is 0, as autograd's.
                g.masked_fill_(above <= 0, 0.0)
        return losses

    @staticmethod
    def _linear(params: Mapping[str, torch.Tensor], prefix: str, h: torch.Tensor) -> torch.Tensor:
        weight = params[f"{prefix}weight"].transpose(1, 2)
        bias = params.get(f"{prefix}bias")
        return torch.bmm(h, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, weight)
