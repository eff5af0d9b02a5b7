"""The attack-simulation client step: a seeded set of clients poisons its data or what it sends.

``attack_args`` turns it on. ``byzantine`` and ``model_replacement`` are carried out by
``attack_args.byzantine_client_num`` clients, ``label_flipping`` by ``ratio_of_poisoned_client`` of all
clients. Attackers train with the algorithm's own client rule; the step changes their data before and
their update after. Simulation only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings
from fedml.core.algorithms.base import Client, RoundContext, Update
from fedml.core.attacks import (
    ATTACK_TYPES,
    ATTACKER_STREAM,
    AttackType,
    ByzantineMode,
    byzantine_state,
    choose_attackers,
    flip_labels,
    model_replacement,
)
from fedml.core.sampling import client_generator
from fedml.core.steps import ClientStep
from fedml.data.dataset import ClientData


class AttackArgs(ComponentSettings):
    """``attack_args``: simulated adversaries among the clients (simulation only)."""

    section = "attack_args"
    enable_attack: bool = False
    attack_type: AttackType | None = None
    attack_mode: ByzantineMode = "random"
    byzantine_client_num: int = Field(0, ge=0)
    scale_factor: float = Field(10.0, gt=0)
    original_class_list: list[int] = Field(default_factory=list)
    target_class_list: list[int] = Field(default_factory=list)
    ratio_of_poisoned_client: float = Field(0.0, ge=0, le=1)
    boost_factor: float | None = Field(None, gt=0)

    @classmethod
    def cross_check(cls, sections: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check that an enabled attack names its type, runs in simulation, and maps classes one to one."""
        attack = sections["attack_args"]
        errors = []
        if attack.enable_attack and attack.attack_type is None:
            errors.append(
                (
                    "attack_args.attack_type",
                    f"enable_attack is true but no type is set; valid: {', '.join(ATTACK_TYPES)}",
                )
            )
        if attack.enable_attack and sections["common_args"].training_type != "simulation":
            errors.append(
                ("attack_args.enable_attack", "attacks are simulated only (common_args.training_type)")
            )
        if len(attack.original_class_list) != len(attack.target_class_list):
            errors.append(
                (
                    "attack_args.target_class_list",
                    f"{len(attack.target_class_list)} classes but original_class_list has "
                    f"{len(attack.original_class_list)}",
                )
            )
        return errors


class AttackStep(ClientStep):
    """Simulated adversaries among the clients, as ``attack_args`` describes.

    Parameters
    ----------
    args
        The run's arguments (``attack_args``, ``random_seed``, ``client_num_in_total``,
        ``client_num_per_round``).

    """

    name = "attack"
    backends = ("sp", "MPI", "NCCL", "TRPC")

    def __init__(self, args: Any) -> None:
        attack = args.attack_args
        self.settings = attack
        self.seed = int(args.random_seed)
        self.per_round = int(args.client_num_per_round)
        if attack.attack_type == "label_flipping":
            count = round(attack.ratio_of_poisoned_client * args.client_num_in_total)
        else:
            count = attack.byzantine_client_num
        self.attackers = set(choose_attackers(self.seed, args.client_num_in_total, count))

    def describe(self) -> str:
        """Return the attack and its attackers, for the server's log."""
        attack = self.settings
        mode = f" ({attack.attack_mode})" if attack.attack_type == "byzantine" else ""
        return f"Simulated attack: {attack.attack_type}{mode} by clients {sorted(self.attackers)}"

    def prepare(self, client: Client, ctx: RoundContext) -> Client:
        """Give a label-flipping attacker its poisoned data."""
        attack = self.settings
        if client.idx not in self.attackers or attack.attack_type != "label_flipping":
            return client
        poisoned = _poisoned(client.train_data, attack.original_class_list, attack.target_class_list)
        return dataclasses.replace(client, train_data=poisoned)

    def finish(self, update: Update, global_state: dict[str, torch.Tensor], ctx: RoundContext) -> Update:
        """Replace a Byzantine attacker's state, or boost a model-replacement attacker's."""
        attack = self.settings
        if update.client_idx not in self.attackers:
            return update
        if attack.attack_type == "byzantine":
            generator = client_generator(self.seed ^ ATTACKER_STREAM, ctx.round_idx, update.client_idx)
            state = byzantine_state(
                update.state, global_state, attack.attack_mode, generator, attack.scale_factor
            )
            return dataclasses.replace(update, state=state)
        if attack.attack_type == "model_replacement":
            boost = attack.boost_factor or float(self.per_round)
            return dataclasses.replace(update, state=model_replacement(update.state, global_state, boost))
        return update


def attack_step(args: Any) -> AttackStep | None:
    """Return the attack step when ``attack_args.enable_attack`` is set, else ``None``."""
    return AttackStep(args) if args.attack_args.enable_attack else None


def _poisoned(data: ClientData, original: Sequence[int], target: Sequence[int]) -> ClientData:
    x, y = data.tensors()
    return ClientData(x, flip_labels(y, original, target), torch.arange(len(y)), data.batch_size)
