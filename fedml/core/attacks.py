"""Simulated adversaries for testing defenses: Byzantine updates, label flipping, model replacement.

Pure functions over model states and label tensors; which clients attack is a seeded choice fixed for
the whole run. Attacks exist for simulation only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedml.core.aggregation import State
from fedml.core.algorithms.base import Algorithm, Client, LocalObjective, RoundContext, Update
from fedml.core.sampling import client_generator
from fedml.data.dataset import ClientData
from fedml.errors import ConfigError
from fedml.tracking import role_logger

BYZANTINE_MODES = ("random", "zero", "flip", "scaled")
"""``attack_mode`` values of the ``byzantine`` attack."""

ATTACK_TYPES = ("byzantine", "label_flipping", "model_replacement")
"""``attack_type`` values."""

_ATTACKER_STREAM = 0xBAD


def choose_attackers(seed: int, client_num: int, count: int) -> list[int]:
    """Return ``count`` distinct client indices, sorted, drawn from ``seed`` alone (fixed for the run).

    Raises
    ------
    ConfigError
        If ``count`` is negative or larger than ``client_num``.

    """
    if not 0 <= count <= client_num:
        raise ConfigError(f"attack_args: {count} attackers requested but there are {client_num} clients")
    rng = np.random.default_rng(np.random.SeedSequence([seed, _ATTACKER_STREAM]))
    return sorted(int(c) for c in rng.choice(client_num, size=count, replace=False))


def byzantine_state(
    state: State, global_state: State, mode: str, generator: torch.Generator, scale: float = 10.0
) -> dict[str, torch.Tensor]:
    """Return what a Byzantine client sends instead of its honest ``state``.

    Modes: ``random`` (standard normal values), ``zero`` (all zeros), ``flip`` (the update with its
    sign flipped: ``g - (s - g)``), ``scaled`` (the update multiplied: ``g + scale * (s - g)``).
    Integer buffers are sent unchanged.

    Raises
    ------
    ConfigError
        For an unknown mode.

    """
    if mode not in BYZANTINE_MODES:
        raise ConfigError(
            f"attack_args.attack_mode: unknown mode {mode!r}; valid: {', '.join(BYZANTINE_MODES)}"
        )
    result: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if not tensor.dtype.is_floating_point:
            result[name] = tensor.clone()
        elif mode == "random":
            result[name] = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
        elif mode == "zero":
            result[name] = torch.zeros_like(tensor)
        elif mode == "flip":
            result[name] = 2 * global_state[name] - tensor
        else:
            result[name] = global_state[name] + scale * (tensor - global_state[name])
    return result


def model_replacement(state: State, global_state: State, boost: float) -> dict[str, torch.Tensor]:
    """Boost a (backdoored) update so it survives averaging: ``g + boost * (s - g)`` (Bagdasaryan et al.).

    With ``boost`` equal to the number of clients per round, the average becomes the attacker's model.
    """
    return {
        name: global_state[name] + boost * (tensor - global_state[name])
        if tensor.dtype.is_floating_point
        else tensor
        for name, tensor in state.items()
    }


def flip_labels(labels: torch.Tensor, original: Sequence[int], target: Sequence[int]) -> torch.Tensor:
    """Return a copy of ``labels`` with every ``original[i]`` replaced by ``target[i]``.

    Raises
    ------
    ConfigError
        If the two lists differ in length.

    """
    if len(original) != len(target):
        raise ConfigError(
            f"attack_args: original_class_list has {len(original)} classes, target_class_list {len(target)}"
        )
    flipped = labels.clone()
    for source, destination in zip(original, target, strict=True):
        flipped[labels == source] = destination
    return flipped


class AttackedAlgorithm:
    """Wraps any algorithm so that a seeded set of clients attacks, as ``attack_args`` describes.

    ``byzantine`` and ``model_replacement`` are carried out by ``byzantine_client_num`` clients,
    ``label_flipping`` by ``ratio_of_poisoned_client`` of all clients. Attackers train on their (for
    label flipping, poisoned) data with the inner algorithm's client rule, then change what they send.
    The server rule is the inner algorithm's. Attacking clients are trained one at a time.

    Parameters
    ----------
    inner
        The algorithm under attack.
    args
        The run's arguments (``attack_args``, ``random_seed``, ``client_num_in_total``).

    """

    def __init__(self, inner: Algorithm, args: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.accepts_presummed_updates = inner.accepts_presummed_updates
        self.args = args
        self.attack_type = args.attack_type
        if self.attack_type == "label_flipping":
            count = round(args.ratio_of_poisoned_client * args.client_num_in_total)
        else:
            count = args.byzantine_client_num
        self.attackers = set(choose_attackers(args.random_seed, args.client_num_in_total, count))
        role_logger("Server", 0).info(
            "Simulated attack: %s%s by clients %s",
            self.attack_type,
            f" ({args.attack_mode})" if self.attack_type == "byzantine" else "",
            sorted(self.attackers),
        )

    def client_payload(self, client_idx: int) -> dict[str, torch.Tensor]:
        """Return the inner algorithm's payload."""
        return self.inner.client_payload(client_idx)

    def local_objective(self) -> LocalObjective | None:
        """Return ``None``: attackers do more than a local objective, so clients train one at a time."""
        return None

    def client_update(
        self, global_state: dict[str, torch.Tensor], client: Client, ctx: RoundContext
    ) -> Update:
        """Run the inner client rule; an attacker poisons its data or what it sends."""
        if client.idx not in self.attackers:
            return self.inner.client_update(global_state, client, ctx)
        args = self.args
        if self.attack_type == "label_flipping":
            poisoned = _poisoned(client.train_data, args.original_class_list, args.target_class_list)
            client = dataclasses.replace(client, train_data=poisoned)
        update = self.inner.client_update(global_state, client, ctx)
        if self.attack_type == "byzantine":
            generator = client_generator(args.random_seed ^ _ATTACKER_STREAM, ctx.round_idx, client.idx)
            update.state = byzantine_state(
                update.state, global_state, args.attack_mode, generator, args.scale_factor
            )
        elif self.attack_type == "model_replacement":
            boost = args.boost_factor or float(args.client_num_per_round)
            update.state = model_replacement(update.state, global_state, boost)
        return update

    def server_update(
        self, global_state: dict[str, torch.Tensor], updates: list[Update], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """Run the inner server rule."""
        return self.inner.server_update(global_state, updates, ctx)

    def state_dict(self) -> dict[str, Any]:
        """Return the inner algorithm's state (empty for stateless algorithms), for checkpoints."""
        inner = getattr(self.inner, "state_dict", None)
        return inner() if inner is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the inner algorithm's state."""
        self.inner.load_state_dict(state)


def _poisoned(data: ClientData, original: Sequence[int], target: Sequence[int]) -> ClientData:
    x, y = data.tensors()
    return ClientData(x, flip_labels(y, original, target), torch.arange(len(y)), data.batch_size)
