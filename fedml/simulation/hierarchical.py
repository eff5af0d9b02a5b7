"""``common_args.topology: hierarchical``: HierFAVG in sp and MPI over the one round driver.

The round is ``FederatedRound`` unchanged; its backend is ``HierarchicalBackend``, which trains each
group's sampled clients ``topology_args.group_comm_round`` times, aggregating them into the group
model each time, and hands the server one update per group. In sp every group trains in this process;
under MPI (or any transport ``open_transport`` gives) rank ``g + 1`` hosts group ``g`` and rank 0 runs
the round over ``RemoteBackend``, which sends each group's clients to its rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedml.config.sections import read_settings
from fedml.core.privacy.settings import DPArgs
from fedml.core.robust import chain_preconditions, defense_chain
from fedml.core.round import RoundWorker, server_wait
from fedml.core.round.hierarchical import HierarchicalBackend, group_clients
from fedml.core.steps.defense import DefenseStep
from fedml.errors import ConfigError, NotSupportedError, PrivacyError, TransportError
from fedml.tracking import role_logger

if TYPE_CHECKING:
    import logging

    from fedml.simulation.base import Simulator
    from fedml.tracking import RunResult


def run_hierarchical(simulator: Simulator) -> RunResult:
    """Carry out ``simulator``'s run as hierarchical FL; every process returns the run's result.

    Raises
    ------
    NotSupportedError, PrivacyError, ConfigError
        Before anything starts, for what hierarchical training cannot honour (``check_hierarchical``),
        and under MPI when the process count is not ``topology_args.group_num + 1``.

    """
    groups = client_groups(simulator)
    check_hierarchical(simulator, groups)
    if simulator.backend_name == "sp":
        rounds = simulator.rounds()
        describe(rounds.log, groups, simulator.args.group_comm_round)
        backend = HierarchicalBackend(
            simulator.local_backend(),
            dict(enumerate(groups)),
            simulator.args.group_comm_round,
            simulator.steps.server,
            rounds.log,
        )
        return rounds.run(backend)
    return _run_remote(simulator, groups)


def _run_remote(simulator: Simulator, groups: list[list[int]]) -> RunResult:
    from fedml.simulation.mpi import MPISimulator

    if not isinstance(simulator, MPISimulator):
        raise NotSupportedError(
            f"common_args.topology hierarchical runs over comm_args.backend sp, MPI or TRPC, "
            f"not {simulator.backend_name}"
        )
    args = simulator.args
    transport = simulator.open_transport()
    if transport.world_size != len(groups) + 1:
        raise ConfigError(
            f"topology_args.group_num {len(groups)} needs {len(groups) + 1} processes (rank 0 the server, "
            f"one rank per group), but {transport.world_size} were launched; launch with "
            f"mpirun -np {len(groups) + 1}"
        )
    role, rank = ("Server", 0) if transport.rank == 0 else ("Client", transport.rank)
    try:
        if transport.rank == 0:
            rounds = simulator.rounds()
            describe(rounds.log, groups, args.group_comm_round)
            return rounds.run(simulator.remote_backend(transport, rounds.log))
        group = transport.rank - 1
        members = groups[group]
        log = role_logger(role, rank)
        backend = HierarchicalBackend(
            simulator.local_backend(), {group: members}, args.group_comm_round, simulator.steps.server, log
        )
        counts = simulator.sample_counts()
        hosted = {c: counts[c] for c in members}
        return RoundWorker(transport, backend, hosted, server_wait(args.timeout)).run()
    except TransportError as exc:
        role_logger(role, rank).error("Aborting the %s job: %s", simulator.backend_name, exc)
        transport.abort(1)
        raise


def client_groups(simulator: Simulator) -> list[list[int]]:
    """Return the run's groups (``topology_args.group_num``, ``group_method``; seeded by ``random_seed``).

    Raises
    ------
    ConfigError
        If ``group_num`` exceeds the number of clients.

    """
    args, dataset = simulator.args, simulator.dataset
    labels = None
    if args.group_method == "by_label":
        labels = [data.y[data.indices] for data in map(dataset.local_train, range(dataset.client_num))]
    return group_clients(dataset.client_num, args.group_num, args.group_method, args.random_seed, labels)


def check_hierarchical(simulator: Simulator, groups: list[list[int]]) -> None:
    """Refuse, before anything starts, what hierarchical training with ``groups`` would compute wrongly.

    The server sees one model per group, not each client's update: the algorithm's server rule must
    depend on the updates only through their weighted mean (FedAvg, FedProx, FedOpt; not SCAFFOLD,
    FedDyn, FedNova). Each client releases ``group_comm_round`` updates a round to its group aggregator,
    which the DP steps and accountant do not model, so differential privacy is refused; so is every server
    step but the robust rule (secure aggregation would hide the updates the group aggregator combines).
    The robust rule runs at both levels, so its preconditions must hold for the clients of the smallest
    group (when all are sampled; fewer sampled may still fail that round) and for ``group_num`` models.

    Raises
    ------
    NotSupportedError
        Naming the algorithm or step and ``common_args.topology``.
    PrivacyError
        If ``dp_args`` enables differential privacy.
    ConfigError
        If the robust rule cannot aggregate the smallest group or the ``group_num`` group models.

    """
    args, algorithm = simulator.args, simulator.algorithm
    if not algorithm.accepts_presummed_updates:
        raise NotSupportedError(
            f"common_args.topology hierarchical hands the server one model per group, which "
            f"train_args.federated_optimizer {algorithm.name} cannot use: its server rule needs every "
            "client's update; use FedAvg, FedProx or FedOpt"
        )
    if read_settings(args, DPArgs).enable_dp:
        raise PrivacyError(
            "dp_args.enable_dp: common_args.topology hierarchical sends each client's update to a group "
            f"aggregator topology_args.group_comm_round ({args.group_comm_round}) times a round, which the "
            "DP steps and accountant (written for one server) do not model; the reported epsilon could "
            "be wrong, so DP is refused"
        )
    for step in simulator.steps.server:
        if not isinstance(step, DefenseStep):
            raise NotSupportedError(
                f"the {step.name} step does not run under common_args.topology hierarchical: group "
                "aggregators combine the clients' updates in the clear; only defense_args runs there"
            )
    chain = defense_chain(args.defense_args)
    if not chain:
        return
    smallest = min(len(g) for g in groups)
    for updates, where in (
        (smallest, f"the {smallest} clients of the smallest group"),
        (args.group_num, f"the topology_args.group_num {args.group_num} group models at the server"),
    ):
        problems = chain_preconditions(chain, args.defense_args, updates)
        if problems:
            # chain_preconditions words its problem for client_num_per_round; here the counts differ.
            problem = problems[0].split(" (with train_args.client_num_per_round")[0]
            raise ConfigError(
                f"defense_args.defense_type {' -> '.join(chain)} aggregates {where}, and cannot: {problem}"
            )


def describe(log: logging.LoggerAdapter, groups: list[list[int]], group_rounds: int) -> None:
    """Log the groups and their rounds, once, on the server."""
    log.info(
        "Hierarchical: %d groups of %s clients, %d group round(s) per round",
        len(groups),
        "/".join(str(len(g)) for g in groups),
        group_rounds,
    )
