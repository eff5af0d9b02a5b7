"""``common_args.topology``: how a simulation's clients are connected, and the ``topology_args`` keys.

``star`` is the server and its clients, the round driver as every backend runs it. The other
topologies are entries of ``TOPOLOGIES``: ``decentralized`` (gossip over a graph, no server) and
``hierarchical`` (clients under group aggregators). Each entry is a function that carries out a
simulation given its runner (``Simulator``), so it reuses the runner's model, algorithm, client steps
and engine; each declares its own ``topology_args`` keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from fedml.config.sections import ComponentSettings
from fedml.core.registry import Registry

if TYPE_CHECKING:
    from fedml.simulation.base import Simulator
    from fedml.tracking import RunResult

TopologyRun = Callable[["Simulator"], "RunResult"]
"""``run(simulator) -> RunResult``: carries out a simulation with this topology."""

TOPOLOGIES: Registry[TopologyRun] = Registry("topology", key="common_args.topology")
"""Topologies other than ``star`` by ``common_args.topology`` name."""

TOPOLOGY_BACKENDS = ("sp", "MPI", "TRPC")
"""The simulation backends that run a topology other than ``star``."""

GraphName = Literal["ring", "torus", "random_regular", "erdos_renyi", "full", "adjacency"]


class GossipArgs(ComponentSettings):
    """``topology_args`` of ``decentralized``: the graph the clients gossip over.

    ``graph`` is built on ``client_num_in_total`` nodes (``fedml.core.topology``); ``adjacency`` is a
    user-given 0/1 matrix when ``graph`` is ``adjacency``. ``degree`` is the random regular graph's,
    ``probability`` the Erdos-Renyi edge probability. Each round every node trains, then averages with
    its neighbours ``gossip_steps`` times by the Metropolis-Hastings mixing matrix; ``time_varying``
    draws a new random graph each round (from the run's seed and the round).
    """

    section = "topology_args"
    graph: GraphName = "ring"
    degree: int = Field(4, ge=1)
    probability: float = Field(0.3, gt=0, le=1)
    adjacency: list[list[int]] | None = None
    gossip_steps: int = Field(1, ge=1)
    time_varying: bool = False

    @classmethod
    def cross_check(cls, sections: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check that a topology other than ``star`` runs in a simulation backend that supports it."""
        common, comm, topology = sections["common_args"], sections["comm_args"], sections["topology_args"]
        errors = []
        simulated = common.training_type == "simulation" and comm.backend in TOPOLOGY_BACKENDS
        if common.topology != "star" and not simulated:
            errors.append(
                (
                    "common_args.topology",
                    f"{common.topology} runs in simulation with comm_args.backend "
                    f"{' | '.join(TOPOLOGY_BACKENDS)}, not {common.training_type} over {comm.backend}",
                )
            )
        if (topology.graph == "adjacency") != (topology.adjacency is not None):
            errors.append(
                ("topology_args.adjacency", "give a matrix exactly when topology_args.graph is adjacency")
            )
        if topology.time_varying and topology.graph not in ("random_regular", "erdos_renyi"):
            errors.append(
                (
                    "topology_args.time_varying",
                    f"needs a random graph (random_regular, erdos_renyi), not {topology.graph}",
                )
            )
        return errors


class GroupArgs(ComponentSettings):
    """``topology_args`` of ``hierarchical``: the groups of clients and their rounds (HierFAVG).

    Clients are split into ``group_num`` groups (``random``: seeded, as equal as possible;
    ``by_label``: clients with the same most frequent label together). Each global round, every group
    aggregates its sampled clients ``group_comm_round`` times before the server aggregates the groups.
    """

    section = "topology_args"
    group_num: int = Field(2, ge=1)
    group_method: Literal["random", "by_label"] = "random"
    group_comm_round: int = Field(1, ge=1)


def register_topology(name: str, run: TopologyRun | str, settings: Any = None) -> None:
    """Make ``run`` carry out simulations with ``common_args.topology: name``.

    ``run`` may be ``"module:function"``, imported on first use; ``settings`` is the
    ``ComponentSettings`` model of the ``topology_args`` keys it adds.
    """
    TOPOLOGIES.register(name, run, settings=settings)


def run_topology(simulator: Simulator) -> RunResult | None:
    """Carry out ``simulator``'s run with its topology; return ``None`` for ``star`` (the runner's own)."""
    name = simulator.args.topology
    if name == "star":
        return None
    return TOPOLOGIES.get(name)(simulator)


_HERE = "fedml.simulation.topologies"
register_topology("decentralized", "fedml.simulation.decentralized:run_decentralized", f"{_HERE}:GossipArgs")
register_topology("hierarchical", "fedml.simulation.hierarchical:run_hierarchical", f"{_HERE}:GroupArgs")
