"""A model state as one flat float32 vector and back: what secure aggregation masks and sums."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedml.errors import SecAggError


@dataclass(frozen=True)
class StateSpec:
    """Where each tensor of a state lies in its flat vector: names, shapes and dtypes, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...]

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(math.prod(shape) for shape in self.shapes)


def flatten_state(state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, StateSpec]:
    """Return the state's floating-point tensors as one float32 vector, and the spec to rebuild them.

    Raises
    ------
    SecAggError
        If a tensor is not floating point (integer buffers such as batch counters are not averaged
        and have no place in a masked sum; leave them out of the state handed over).

    Examples
    --------
    >>> import torch
    >>> vector, spec = flatten_state({"w": torch.ones(2, 2), "b": torch.zeros(3)})
    >>> vector.shape, {k: tuple(v.shape) for k, v in unflatten(vector, spec).items()}
    (torch.Size([7]), {'w': (2, 2), 'b': (3,)})

    """
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise SecAggError(f"secure aggregation sums float tensors only; {name!r} is {tensor.dtype}")
    spec = StateSpec(
        tuple(state),
        tuple(tuple(t.shape) for t in state.values()),
        tuple(t.dtype for t in state.values()),
    )
    parts = [t.detach().to("cpu", torch.float32).reshape(-1) for t in state.values()]
    vector = torch.cat(parts) if parts else torch.empty(0, dtype=torch.float32)
    return vector, spec


def unflatten(vector: torch.Tensor, spec: StateSpec) -> dict[str, torch.Tensor]:
    """Return the state that ``flatten_state`` made ``vector`` of, each tensor in its own dtype.

    Raises
    ------
    SecAggError
        If the vector's length does not match the spec.

    """
    if vector.dim() != 1 or len(vector) != spec.size:
        raise SecAggError(
            f"secure aggregation: a vector of shape {tuple(vector.shape)} does not fit {spec.size}"
        )
    state, offset = {}, 0
    for name, shape, dtype in zip(spec.names, spec.shapes, spec.dtypes, strict=True):
        count = math.prod(shape)
        state[name] = vector[offset : offset + count].reshape(shape).to(dtype)
        offset += count
    return state
