"""Decentralized simulation (``common_args.topology: decentralized``): D-PSGD over a graph, no server.

Every client is a node. Each round every node trains from its own model (``LocalBackend``: the
algorithm's client rule, the client steps, the engine), then gossips ``gossip_steps`` times with its
neighbours by the mixing matrix (``fedml.core.round.gossip``). The average of the node models is
evaluated on the global test set and tracked with the consensus distance (mean over nodes of
``||x_i - x_avg||``) by ``RunTracker``, so the run directory is the same as a star run's; the average
model is the run's ``model_state``.

In ``sp`` all nodes live in this process. Over ``MPI`` (or any transport ``open_transport`` gives)
rank 0 only tracks, and ranks ``1 .. N-1`` host contiguous blocks of nodes; before each gossip step a
rank sends the models of its nodes with neighbours elsewhere to the ranks hosting them as ``GOSSIP``
messages, pairs of ranks in ascending order, the lower one sending first, so no two ranks wait on
each other. Then every worker reports its nodes to rank 0 (their models on evaluated rounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedml.core.algorithms import Update
from fedml.core.comm import Message, MessageKind, Transport
from fedml.core.round.driver import evaluates, train_loss
from fedml.core.round.gossip import (
    GOSSIP_ALGORITHMS,
    Gossip,
    State,
    average,
    consensus_distance,
    mix,
    train_round,
)
from fedml.core.round.secure import secagg_settings
from fedml.core.round.wire import pack_outcome, pack_updates, unpack_outcome, unpack_updates
from fedml.core.topology import spectral_gap
from fedml.errors import ConfigError, FedMLError, NotSupportedError, ProtocolError, TransportError
from fedml.tracking import Progress, RunResult, RunTracker, role_logger

if TYPE_CHECKING:
    import logging

    from fedml.simulation.base import Simulator

COORDINATOR = "0"
"""The rank that tracks a multi-process run (it hosts no node)."""


def run_decentralized(simulator: Simulator) -> RunResult:
    """Carry out ``simulator``'s run as D-PSGD over its ``topology_args`` graph; return the result.

    Every rank of a multi-process run returns the same result.

    Raises
    ------
    ConfigError
        Before anything starts, for what decentralized training cannot run (see ``check``).

    """
    check(simulator)
    gossip = Gossip(simulator.args, simulator.dataset.client_num)
    if simulator.backend_name == "sp":
        return _run_here(simulator, gossip)
    return _run_on_ranks(simulator, gossip)


def check(simulator: Simulator) -> None:
    """Refuse what has no place without a server.

    Raises
    ------
    ConfigError
        For an algorithm with a server rule, fewer clients per round than nodes, server steps (robust
        rules, central noise, accounting), secure aggregation, or a resumed run.

    """
    args = simulator.args
    if args.federated_optimizer not in GOSSIP_ALGORITHMS:
        raise ConfigError(
            f"train_args.federated_optimizer {args.federated_optimizer}: decentralized training has no "
            f"server rule to run it; use one of {', '.join(GOSSIP_ALGORITHMS)}"
        )
    if args.client_num_per_round != simulator.dataset.client_num:
        raise ConfigError(
            f"train_args.client_num_per_round {args.client_num_per_round}: every node of a decentralized "
            f"run trains each round; set it to client_num_in_total ({simulator.dataset.client_num})"
        )
    if simulator.steps.server:
        names = ", ".join(step.name for step in simulator.steps.server)
        raise ConfigError(
            f"common_args.topology decentralized has no server, so the server step(s) {names} cannot run"
        )
    if secagg_settings(args) is not None:
        raise ConfigError(
            "common_args.topology decentralized has no server to sum masked updates: "
            "disable secure_aggregation_args"
        )
    if args.resume_from:
        raise ConfigError("tracking_args.resume_from: a decentralized run cannot be resumed")


class Tracking:
    """The run directory and round lines of a decentralized run (in sp, or on rank 0).

    Parameters
    ----------
    simulator
        The runner: arguments, device, test set, aggregator (evaluates the average model).
    gossip
        The run's graphs, for the header line.

    """

    def __init__(self, simulator: Simulator, gossip: Gossip) -> None:
        args = simulator.args
        self.simulator = simulator
        names = simulator.names()
        self.tracker = RunTracker(
            args,
            dataset=names.get("dataset"),
            model=names.get("model"),
            engine=simulator.engine,
            data_seconds=getattr(simulator.dataset, "load_seconds", None),
        )
        self.tracker.start(gossip.n)
        self.log = self.tracker.log
        for step in simulator.steps.client:
            self.log.info("%s", step.describe())
        self.log.info(
            "Decentralized: %s graph on %d nodes%s, spectral gap %.4f, %d gossip step(s) per round",
            args.graph,
            gossip.n,
            " (a new one each round)" if gossip.time_varying else "",
            spectral_gap(gossip.weights(0)),
            gossip.steps,
        )
        self.bar = Progress(args.comm_round, 0, enabled=False if args.quiet else None)
        self.mean: State | None = None

    def round_done(
        self, round_idx: int, began: float, updates: Sequence[Update], states: Sequence[State] | None
    ) -> None:
        """Record round ``round_idx``; given the node models after gossip, evaluate their average."""
        simulator, tracker = self.simulator, self.tracker
        if states is not None:
            self.mean = average(states)
            distance = consensus_distance(states, self.mean)
            test_data = simulator.dataset.test_global
            if test_data is not None:
                simulator.aggregator.set_model_params(self.mean)
                test = simulator.aggregator.test(test_data, simulator.device, simulator.args)
                tracker.log_round(
                    round_idx, test, train_loss(list(updates)), len(updates), {"consensus_distance": distance}
                )
        tracker.round_done(began)
        last = tracker.history[-1]["test_accuracy"] if tracker.history else None
        self.bar.advance(last)

    def finish(self) -> RunResult:
        """Write the run's summary and final model (the nodes' average); return the result."""
        self.bar.close()
        if self.mean is None:
            raise FedMLError("a decentralized run ended before its last round was evaluated")
        return self.tracker.finish(self.mean)

    def fail(self, error: BaseException) -> None:
        """Record why the run stopped."""
        self.bar.close()
        self.tracker.fail(error)


def _run_here(simulator: Simulator, gossip: Gossip) -> RunResult:
    """Run every node in this process."""
    args = simulator.args
    backend = simulator.local_backend()
    tracking = Tracking(simulator, gossip)
    nodes = list(range(gossip.n))
    try:
        start = simulator.aggregator.get_model_params()
        states = dict.fromkeys(nodes, start)
        for round_idx in range(args.comm_round):
            began = tracking.tracker.round_started()
            updates, states = train_round(backend, round_idx, states, nodes)
            weights = gossip.weights(round_idx)
            for _ in range(gossip.steps):
                states = mix(states, weights, nodes)
            evaluated = [states[i] for i in nodes] if evaluates(args, round_idx) else None
            tracking.round_done(round_idx, began, updates, evaluated)
        return tracking.finish()
    except BaseException as exc:
        tracking.fail(exc)
        raise


def hosts(n: int, world_size: int) -> list[int]:
    """Return the rank hosting each of ``n`` nodes: contiguous blocks over ranks ``1 .. world_size - 1``.

    Contiguous blocks keep a ring's or torus's neighbours mostly on one rank.

    Examples
    --------
    >>> hosts(5, 3)
    [1, 1, 1, 2, 2]

    """
    blocks = np.array_split(np.arange(n), world_size - 1)
    owner = [0] * n
    for rank, block in enumerate(blocks, start=1):
        for node in block:
            owner[int(node)] = rank
    return owner


class Mailbox:
    """Messages of a multi-process run that arrived before they were wanted, by what they are.

    Parameters
    ----------
    transport
        This rank's transport.
    timeout
        Seconds to wait for a message (``comm_args.timeout``).
    log
        This rank's logger.

    """

    def __init__(self, transport: Transport, timeout: float, log: logging.LoggerAdapter) -> None:
        self.transport = transport
        self.timeout = timeout
        self.log = log
        self.waiting: dict[tuple[str, int, int, str], Message] = {}

    def send(
        self,
        receiver: str,
        stage: str,
        round_idx: int,
        step: int = 0,
        metadata: dict[str, Any] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
        kind: MessageKind = MessageKind.GOSSIP,
    ) -> None:
        """Send a message of ``stage`` (``start``, ``gossip``, ``report``) to ``receiver``."""
        meta = {"stage": stage, "step": step, **(metadata or {})}
        address = self.transport.address
        self.transport.send(Message(kind, address, receiver, round_idx, meta, tensors or {}))

    def take(self, stage: str, round_idx: int, sender: str, step: int = 0) -> Message:
        """Return ``sender``'s message of ``stage`` for ``round_idx`` and ``step``, waiting for it.

        Raises
        ------
        FedMLError
            If another rank reports that it failed.
        TransportError
            If nothing arrives within the timeout.

        """
        key = (stage, round_idx, step, sender)
        while key not in self.waiting:
            try:
                message = self.transport.receive(self.timeout)
            except ProtocolError as exc:
                self.log.warning("Ignored a malformed message: %s", exc)
                continue
            if message.kind == MessageKind.ERROR:
                raise FedMLError(f"rank {message.sender} failed: {message.metadata.get('error')}")
            if message.kind == MessageKind.FINISH:
                self.waiting[("finish", -1, 0, message.sender)] = message
                continue
            meta = message.metadata
            arrived = (str(meta.get("stage")), message.round_idx, meta.get("step", 0), message.sender)
            if message.kind != MessageKind.GOSSIP or arrived in self.waiting:
                self.log.warning("Ignored an unexpected or duplicate message: %s", message.describe())
                continue
            self.waiting[arrived] = message
        return self.waiting.pop(key)


def _run_on_ranks(simulator: Simulator, gossip: Gossip) -> RunResult:
    """Run the nodes across the ranks of ``simulator.open_transport()``; every rank returns the result."""
    from fedml.simulation.mpi import MPISimulator

    if not isinstance(simulator, MPISimulator):
        raise NotSupportedError(
            f"common_args.topology decentralized runs over comm_args.backend sp, MPI or TRPC, "
            f"not {simulator.backend_name}"
        )
    transport = simulator.open_transport()
    coordinating = transport.address == COORDINATOR
    log = role_logger("Server", 0) if coordinating else role_logger("Client", transport.rank)
    mailbox = Mailbox(transport, simulator.args.timeout, log)
    try:
        if coordinating:
            return _coordinate(simulator, gossip, mailbox, transport.world_size)
        return _host_nodes(simulator, gossip, mailbox, transport.world_size)
    except TransportError as exc:
        log.error("Aborting the %s job: %s", simulator.backend_name, exc)
        transport.abort(1)
        raise
    except Exception as exc:
        if coordinating:
            # The workers cannot finish without rank 0: end them all.
            log.error("Aborting the %s job: %s", simulator.backend_name, exc)
            transport.abort(1)
        else:
            try:
                mailbox.send(COORDINATOR, "error", -1, metadata={"error": repr(exc)}, kind=MessageKind.ERROR)
            except TransportError:
                log.warning("Could not tell rank 0 that this rank failed")
        raise


def _coordinate(simulator: Simulator, gossip: Gossip, mailbox: Mailbox, world_size: int) -> RunResult:
    """Rank 0: send the initial model, track every round from the workers' reports, send the result."""
    args = simulator.args
    tracking = Tracking(simulator, gossip)
    workers = [str(rank) for rank in range(1, world_size)]
    try:
        start = simulator.aggregator.get_model_params()
        for worker in workers:
            mailbox.send(worker, "start", -1, tensors=start)
        for round_idx in range(args.comm_round):
            began = tracking.tracker.round_started()
            reports = [unpack_updates(mailbox.take("report", round_idx, w)) for w in workers]
            updates = sorted((u for report in reports for u in report), key=lambda u: u.client_idx)
            if [u.client_idx for u in updates] != list(range(gossip.n)):
                raise ProtocolError(f"round {round_idx + 1}: the workers did not report every node once")
            evaluated = [u.state for u in updates] if evaluates(args, round_idx) else None
            tracking.round_done(round_idx, began, updates, evaluated)
        result = tracking.finish()
    except BaseException as exc:
        tracking.fail(exc)
        raise
    metadata, tensors = pack_outcome(result, None)
    for worker in workers:
        mailbox.send(worker, "finish", -1, metadata=metadata, tensors=tensors, kind=MessageKind.FINISH)
    return result


def _host_nodes(simulator: Simulator, gossip: Gossip, mailbox: Mailbox, world_size: int) -> RunResult:
    """Train this worker rank's nodes, gossip with the ranks of their neighbours, report to rank 0."""
    args = simulator.args
    rank = int(mailbox.transport.address)
    owner = hosts(gossip.n, world_size)
    mine = [i for i in range(gossip.n) if owner[i] == rank]
    backend = simulator.local_backend()
    start = mailbox.take("start", -1, COORDINATOR).tensors
    states = dict.fromkeys(mine, start)
    for round_idx in range(args.comm_round):
        updates, states = train_round(backend, round_idx, states, mine)
        weights = gossip.weights(round_idx)
        for step in range(gossip.steps):
            theirs = _exchange(mailbox, round_idx, step, states, weights, owner, rank)
            states = mix({**theirs, **states}, weights, mine)
        evaluated = evaluates(args, round_idx)
        report = [
            Update(u.client_idx, u.weight, states[u.client_idx] if evaluated else {}, u.metrics)
            for u in updates
        ]
        metadata, tensors = pack_updates(report)
        mailbox.send(COORDINATOR, "report", round_idx, metadata=metadata, tensors=tensors)
    return unpack_outcome(mailbox.take("finish", -1, COORDINATOR), "rank 0")


def _exchange(
    mailbox: Mailbox,
    round_idx: int,
    step: int,
    states: dict[int, State],
    weights: np.ndarray,
    owner: list[int],
    rank: int,
) -> dict[int, State]:
    """Swap node models with the ranks hosting neighbours of this rank's nodes; return theirs.

    ``W`` is symmetric, so a rank sends to exactly the ranks that send to it. Pairs go in ascending
    order of the other rank, the lower rank of a pair sending first: every rank meets its pairs in
    the same global order, so a blocking send always finds its receiver listening.
    """
    outgoing: dict[int, list[int]] = {}
    for i in states:
        for j in np.flatnonzero(weights[i]):
            other = owner[int(j)]
            if other != rank and i not in outgoing.setdefault(other, []):
                outgoing[other].append(i)
    theirs: dict[int, State] = {}
    for other in sorted(outgoing):
        metadata, tensors = pack_updates([Update(i, 0.0, states[i]) for i in outgoing[other]])
        if rank < other:
            mailbox.send(str(other), "gossip", round_idx, step, metadata, tensors)
        received = mailbox.take("gossip", round_idx, str(other), step)
        if rank > other:
            mailbox.send(str(other), "gossip", round_idx, step, metadata, tensors)
        theirs.update({u.client_idx: u.state for u in unpack_updates(received)})
    return theirs
