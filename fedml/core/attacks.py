"""Simulated adversaries for testing defenses: Byzantine updates, label flipping, model replacement.

Pure functions over model states and label tensors; which clients attack is a seeded choice fixed for
the whole run. Attacks exist for simulation only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from fedml.core.aggregation import State
from fedml.errors import ConfigError

ByzantineMode = Literal["random", "zero", "flip", "scaled"]
BYZANTINE_MODES: tuple[str, ...] = get_args(ByzantineMode)
"""``attack_mode`` values of the ``byzantine`` attack."""

AttackType = Literal["byzantine", "label_flipping", "model_replacement"]
ATTACK_TYPES: tuple[str, ...] = get_args(AttackType)
"""``attack_type`` values."""

ATTACKER_STREAM = 0xBAD
"""Tag mixed into the seed for the choice of attackers and their random updates."""


def choose_attackers(seed: int, client_num: int, count: int) -> list[int]:
    """Return ``count`` distinct client indices, sorted, drawn from ``seed`` alone (fixed for the run).

    Raises
    ------
    ConfigError
        If ``count`` is negative or larger than ``client_num``.

    """
    if not 0 <= count <= client_num:
        raise ConfigError(f"attack_args: {count} attackers requested but there are {client_num} clients")
    rng = np.random.default_rng(np.random.SeedSequence([seed, ATTACKER_STREAM]))
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
