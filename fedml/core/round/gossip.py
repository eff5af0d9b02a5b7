"""Decentralized training's core, the same on every backend: D-PSGD's rule, node training and gossip.

Each round every node trains locally from its own model (the algorithm's client rule and the client
steps, through ``LocalBackend``), then averages with its neighbours ``gossip_steps`` times by the
mixing matrix: ``x_i <- sum_j W[i, j] x_j`` (D-PSGD, Lian et al. 2017). ``mix`` sums the neighbours
in ascending node order in float64, so a node's new model is the same number whichever process
computes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedml.core.aggregation import finite_states
from fedml.core.algorithms.fedavg import FedAvg
from fedml.core.round.backend import RoundTask
from fedml.core.topology import mixing_matrix, round_graph
from fedml.errors import AggregationError, ConfigError

if TYPE_CHECKING:
    from fedml.core.algorithms import Update
    from fedml.core.round.backend import LocalBackend

State = dict[str, torch.Tensor]
"""A node's model state."""

GOSSIP_ALGORITHMS = ("DPSGD", "FedAvg", "FedProx")
"""The ``train_args.federated_optimizer`` values decentralized training runs: plain local rules."""


class DPSGD(FedAvg):
    """D-PSGD's local rule (Lian et al. 2017): local SGD from the node's own model, as FedAvg's clients.

    Not to be confused with ``dp_args.dp_solution_type: dpsgd`` (differentially private SGD). The
    averaging is gossip with the neighbours (``fedml.simulation.decentralized``), not a server rule.

    Parameters
    ----------
    args
        The run's arguments.

    Raises
    ------
    ConfigError
        If ``common_args.topology`` is not ``decentralized``: there is no server to run it under.

    """

    name = "DPSGD"

    def __init__(self, args: Any = None) -> None:
        super().__init__(args)
        topology = getattr(args, "topology", "star")
        if topology != "decentralized":
            raise ConfigError(
                f"train_args.federated_optimizer DPSGD averages by gossip between neighbours and needs "
                f"common_args.topology decentralized, not {topology}; use FedAvg with a server"
            )


class Gossip:
    """The run's graph and mixing matrix per round, from its ``topology_args``.

    Parameters
    ----------
    args
        The run's arguments: ``graph``, ``degree``, ``probability``, ``adjacency``, ``time_varying``,
        ``gossip_steps`` and ``random_seed``.
    n
        The number of nodes.

    Raises
    ------
    ConfigError
        If the graph cannot be built on ``n`` nodes (checked for round 1 at once).

    """

    def __init__(self, args: Any, n: int) -> None:
        self.args = args
        self.n = n
        self.steps = int(args.gossip_steps)
        self.time_varying = bool(args.time_varying)
        first = mixing_matrix(self.graph(0))
        self._static = None if self.time_varying else first

    def graph(self, round_idx: int) -> np.ndarray:
        """Return the adjacency matrix of round ``round_idx``."""
        args = self.args
        return round_graph(
            args.graph,
            self.n,
            degree=args.degree,
            probability=args.probability,
            adjacency=args.adjacency,
            seed=args.random_seed,
            round_idx=round_idx,
            time_varying=self.time_varying,
        )

    def weights(self, round_idx: int) -> np.ndarray:
        """Return the mixing matrix of round ``round_idx`` (a new one per round when time-varying)."""
        if self._static is not None:
            return self._static
        return mixing_matrix(self.graph(round_idx))


def mix(states: Mapping[int, State], weights: np.ndarray, nodes: Iterable[int]) -> dict[int, State]:
    """Return one gossip step for ``nodes``: ``x_i <- sum_j W[i, j] x_j`` over their neighbours ``j``.

    ``states`` must hold every neighbour of ``nodes``. Floating-point tensors are summed in float64 in
    ascending ``j`` and cast back; other tensors (counters) keep the node's own value.

    Examples
    --------
    >>> w = np.array([[0.5, 0.5], [0.5, 0.5]])
    >>> mixed = mix({0: {"x": torch.tensor([1.0])}, 1: {"x": torch.tensor([3.0])}}, w, [0, 1])
    >>> mixed[0]["x"].tolist(), mixed[1]["x"].tolist()
    ([2.0], [2.0])

    """
    mixed = {}
    for i in nodes:
        own = states[i]
        row = [(int(j), float(weights[i, j])) for j in np.flatnonzero(weights[i])]
        state = {}
        for name, tensor in own.items():
            if not tensor.is_floating_point():
                state[name] = tensor.clone()
                continue
            total = torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
            for j, w in row:
                total += w * states[j][name].double()
            state[name] = total.to(tensor.dtype)
        mixed[i] = state
    return mixed


def average(states: Sequence[State]) -> State:
    """Return the plain mean of the nodes' states (float64 sums in node order; counters of the first).

    Gossip with a doubly stochastic matrix keeps this mean, so it is the model D-PSGD converges to.
    """
    first = states[0]
    mean = {}
    for name, tensor in first.items():
        if not tensor.is_floating_point():
            mean[name] = tensor.clone()
            continue
        total = torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
        for state in states:
            total += state[name].double()
        mean[name] = (total / len(states)).to(tensor.dtype)
    return mean


def consensus_distance(states: Sequence[State], mean: State) -> float:
    """Return the mean over nodes of ``||x_i - mean||`` (L2 over all floating-point tensors)."""
    distances = []
    for state in states:
        squared = sum(
            float((state[name].double() - tensor.double()).pow(2).sum())
            for name, tensor in mean.items()
            if tensor.is_floating_point()
        )
        distances.append(math.sqrt(squared))
    return sum(distances) / len(distances)


def train_nodes(backend: LocalBackend, round_idx: int, states: Mapping[int, State]) -> dict[int, Update]:
    """Train every node of ``states`` from its own state; return each node's update.

    Nodes whose states are equal (all of them in round 1, and after gossip on a complete graph) train
    as one task, so the vectorized engine batches them; the others train one task per distinct state.
    Only states with the same fingerprint are compared in full, so distinct states (the usual case
    after gossip) cost one reduction each, not a comparison with every other node's.
    """
    candidates: dict[float, list[tuple[State, list[int]]]] = {}
    for node in sorted(states):
        state = states[node]
        alike = candidates.setdefault(_fingerprint(state), [])
        for start, members in alike:
            if _equal(start, state):
                members.append(node)
                break
        else:
            alike.append((state, [node]))
    groups = sorted((group for alike in candidates.values() for group in alike), key=lambda g: g[1][0])
    updates: dict[int, Update] = {}
    for start, members in groups:
        task = RoundTask(round_idx, start, members, {}, len(members))
        updates.update({u.client_idx: u for u in backend.train(task)})
    return updates


def train_round(
    backend: LocalBackend, round_idx: int, states: Mapping[int, State], nodes: Sequence[int]
) -> tuple[list[Update], dict[int, State]]:
    """Train ``nodes`` from their states; return their updates (in ``nodes`` order) and trained states.

    Raises
    ------
    AggregationError
        If a node's training diverged (``check_finite``).

    """
    trained = train_nodes(backend, round_idx, states)
    updates = [trained[node] for node in nodes]
    check_finite(round_idx, updates)
    return updates, {node: trained[node].state for node in nodes}


def check_finite(round_idx: int, updates: Sequence[Update]) -> None:
    """Refuse a node whose training diverged: gossip would spread it to every other node.

    Raises
    ------
    AggregationError
        Naming the first such node.

    """
    for update, finite in zip(updates, finite_states([u.state for u in updates]), strict=True):
        if not finite:
            raise AggregationError(
                f"round {round_idx + 1}: node {update.client_idx}'s model has non-finite values after "
                "training; training diverged, try a smaller train_args.learning_rate"
            )


def _fingerprint(state: State) -> float:
    """Return a number equal states share: the sum of the first tensor (NaN never matches, which is fine)."""
    first = next(iter(state.values()), None)
    return 0.0 if first is None or first.numel() == 0 else float(first.sum(dtype=torch.float64))


def _equal(a: State, b: State) -> bool:
    return a is b or all(torch.equal(tensor, b[name]) for name, tensor in a.items())
