"""Hierarchical rounds (HierFAVG): the clients' groups, and the backend that aggregates each group first.

``group_clients`` splits the clients into groups (seeded, the same on every process).
``HierarchicalBackend`` trains a round's sampled clients group by group: ``group_rounds`` times it trains
a group's clients from the group model and aggregates them into the next group model, then returns one
update per group, so the one round driver aggregates groups as it would aggregate clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from fedml.core.algorithms import RoundContext, Update, weighted_states
from fedml.core.round.backend import LocalBackend, RoundTask
from fedml.core.round.driver import train_loss, usable_updates
from fedml.errors import AggregationError, ConfigError
from fedml.tracking import role_logger

if TYPE_CHECKING:
    import logging

    from fedml.core.steps import ServerStep

GROUP_METHODS = ("random", "by_label")
"""Valid ``topology_args.group_method`` names."""


def group_clients(
    client_num: int,
    group_num: int,
    method: str = "random",
    seed: int = 0,
    labels: Sequence[torch.Tensor] | None = None,
) -> list[list[int]]:
    """Split clients ``0 .. client_num - 1`` into ``group_num`` groups, each sorted; sizes differ by <= 1.

    ``random`` deals a permutation drawn from ``numpy.random.default_rng(seed)`` round-robin to the
    groups. ``by_label`` sorts the clients by their most frequent training label (ties: the smallest
    label; a client without samples counts as label -1), then by id, and cuts that order into
    ``group_num`` consecutive blocks: clients with the same label share a group unless their label's
    run of clients crosses a block boundary.

    Parameters
    ----------
    client_num
        How many clients there are.
    group_num
        How many groups to make (``topology_args.group_num``).
    method
        ``random`` or ``by_label`` (``topology_args.group_method``).
    seed
        The run's ``random_seed`` (``random`` only).
    labels
        ``by_label`` only: each client's training labels, in client order.

    Raises
    ------
    ConfigError
        If ``group_num`` is not between 1 and ``client_num``, the method is unknown, or ``by_label`` has
        no labels for every client.

    Examples
    --------
    >>> group_clients(5, 2, "by_label", labels=[torch.tensor(y) for y in ([1], [0], [1], [2], [0])])
    [[0, 1, 4], [2, 3]]

    """
    if not 1 <= group_num <= client_num:
        raise ConfigError(
            f"topology_args.group_num is {group_num}, but there are {client_num} clients "
            "(train_args.client_num_in_total): every group needs at least one client"
        )
    if method == "random":
        order = [int(c) for c in np.random.default_rng(seed).permutation(client_num)]
        return [sorted(order[g::group_num]) for g in range(group_num)]
    if method != "by_label":
        raise ConfigError(
            f"topology_args.group_method: unknown method {method!r}; valid: {', '.join(GROUP_METHODS)}"
        )
    if labels is None or len(labels) != client_num:
        raise ConfigError(
            f"topology_args.group_method by_label needs the training labels of all {client_num} clients"
        )
    majority = [_most_frequent(y) for y in labels]
    order = sorted(range(client_num), key=lambda c: (majority[c], c))
    base, extra = divmod(client_num, group_num)
    groups, start = [], 0
    for g in range(group_num):
        size = base + (1 if g < extra else 0)
        groups.append(sorted(order[start : start + size]))
        start += size
    return groups


def _most_frequent(labels: torch.Tensor) -> int:
    if labels.numel() == 0:
        return -1
    counts = torch.bincount(labels.flatten().long())
    return int(torch.argmax(counts))


class HierarchicalBackend(LocalBackend):
    """Trains a round's clients in this process group by group and returns one update per group.

    For each group with sampled clients it repeats ``group_rounds`` times: train them from the group
    model (the round's global state at first) with the algorithm's client rule and the client steps,
    then pass their usable updates through ``server_steps`` (robust filters) and the run's aggregator
    (the weighted mean, or the robust rule of ``defense_args``) into the next group model. Group round
    ``r`` of round ``t`` trains as round ``t * group_rounds + r``, so every group round draws fresh
    mini-batches; with one group round it is round ``t`` itself.

    A group's update has the group's index as ``client_idx``, the group model as state, the total
    sample count of its sampled clients as weight, and the sample-weighted mean ``train_loss`` of all
    its group rounds. An MPI worker hosts one group: give it just that group.

    Parameters
    ----------
    local
        The in-process backend of this run (``Simulator.local_backend()``); its settings are taken over.
    groups
        Group index -> its clients; each client in at most one group.
    group_rounds
        Group aggregations per round (``topology_args.group_comm_round``).
    server_steps
        The steps that run before each group aggregation (the run's server chain).
    log
        Logs dropped updates.

    """

    def __init__(
        self,
        local: LocalBackend,
        groups: Mapping[int, Sequence[int]],
        group_rounds: int,
        server_steps: Sequence[ServerStep] = (),
        log: logging.LoggerAdapter | None = None,
    ) -> None:
        super().__init__(
            local.args,
            local.device,
            local.data,
            local.client_num,
            local.algorithm,
            local.trainer,
            local.aggregator,
            local.steps,
            local.batch_trainer,
            local.name,
        )
        self.groups = {g: sorted(members) for g, members in sorted(groups.items())}
        self.group_of = {c: g for g, members in self.groups.items() for c in members}
        self.group_rounds = group_rounds
        self.server_steps = list(server_steps)
        self.log = log or role_logger("Server", 0)

    def clients(self) -> list[int]:
        """Return the clients of every group."""
        return sorted(self.group_of)

    def train(self, task: RoundTask) -> list[Update]:
        """Train the task's clients group by group; return one update per group with sampled clients.

        Raises
        ------
        ConfigError
            If a client of the task is in none of this backend's groups.
        AggregationError
            If none of a group's client updates is usable.

        """
        strays = [c for c in task.clients if c not in self.group_of]
        if strays:
            raise ConfigError(
                f"clients {strays} are in none of this process's groups {sorted(self.groups)}: every "
                "process must load the same configuration (topology_args.group_num, group_method)"
            )
        updates = []
        for group in self.groups:
            chosen = [c for c in task.clients if self.group_of[c] == group]
            if chosen:
                updates.append(self.train_group(task, group, chosen))
        return updates

    def train_group(self, task: RoundTask, group: int, clients: list[int]) -> Update:
        """Run the group rounds of ``clients`` from the task's state; return the group's update."""
        state = task.global_state
        trained: list[Update] = []
        last: list[Update] = []
        for r in range(self.group_rounds):
            step_round = task.round_idx * self.group_rounds + r
            last = super().train(RoundTask(step_round, state, clients, task.payloads, len(clients)))
            trained.extend(last)
            state = self.aggregate(task.round_idx, step_round, group, last, state)
        weight = float(sum(u.weight for u in last))
        return Update(group, weight, state, {"train_loss": train_loss(trained), "clients": len(clients)})

    def aggregate(
        self,
        round_idx: int,
        step_round: int,
        group: int,
        updates: list[Update],
        group_state: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Combine one group round's client updates into the next group model (as the server would).

        Raises
        ------
        AggregationError
            If none of the updates is usable, or the aggregator's rule cannot combine them (naming the
            group).

        """
        usable = usable_updates(round_idx, updates, self.log, group_state)
        if not usable:
            raise AggregationError(
                f"round {round_idx + 1}: group {group}: none of the {len(updates)} client updates is "
                "usable (non-finite values or zero weight); training diverged, try a smaller "
                "train_args.learning_rate"
            )
        ctx = RoundContext(step_round, self.args, self.device, self.trainer, self.aggregator)
        for step in self.server_steps:
            usable = step.apply(usable, group_state, ctx)
        aggregator = ctx.aggregator
        for step in self.server_steps:
            aggregator = step.wrap_aggregator(aggregator, usable, ctx)
        # Robust rules measure distances from the model the aggregator holds: here, the group's.
        self.aggregator.set_model_params(group_state)
        try:
            return aggregator.aggregate_with_hooks(weighted_states(usable))
        except AggregationError as exc:
            raise AggregationError(
                f"round {round_idx + 1}: group {group} ({len(usable)} client updates): {exc}"
            ) from exc
