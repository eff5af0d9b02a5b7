"""The federated round as messages over any ``Transport``: a server loop and a worker loop, written once.

The server samples clients, assigns them to workers (balanced by sample count), sends each worker the
global state with its clients, collects one ``CLIENT_UPDATE`` per worker carrying every client's update,
and hands them to ``FederatedRound.finish``. A worker trains its assigned clients one after another
with the algorithm's ``client_update`` and replies. MPI simulation runs this over the MPI transport;
cross-silo can run it over a network transport.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedml.core.algorithms import Algorithm, Client, RoundContext, Update
from fedml.core.comm import Message, MessageKind, Transport
from fedml.errors import FedMLError, ProtocolError, TransportError
from fedml.tracking import RunResult, progress, role_logger

if TYPE_CHECKING:
    from fedml.core.round import FederatedRound
    from fedml.data import FederatedDataset
    from fedml.ml import ClientTrainer, ServerAggregator


def assign_clients(
    clients: Sequence[int], sample_counts: Mapping[int, int] | Sequence[int], workers: Sequence[int]
) -> dict[int, list[int]]:
    """Split ``clients`` among ``workers`` so their total sample counts are as even as possible.

    Largest clients go first, each to the currently lightest worker (ties: lowest rank), so the split is
    deterministic. Every worker gets a (possibly empty) sorted list.

    Examples
    --------
    >>> assign_clients([0, 1, 2, 3], [50, 10, 40, 20], workers=[1, 2])
    {1: [0, 1], 2: [2, 3]}

    """
    if not workers:
        raise TransportError("there are no workers to assign clients to")
    heap = [(0, position, rank) for position, rank in enumerate(workers)]
    shares: dict[int, list[int]] = {rank: [] for rank in workers}
    for client in sorted(clients, key=lambda c: (-sample_counts[c], c)):
        load, position, rank = heapq.heappop(heap)
        shares[rank].append(client)
        heapq.heappush(heap, (load + sample_counts[client], position, rank))
    return {rank: sorted(share) for rank, share in shares.items()}


def pack_assignment(
    state: Mapping[str, torch.Tensor], payloads: Mapping[int, Mapping[str, torch.Tensor]]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Turn a worker's round (the global state, its clients and their payloads) into metadata and tensors.

    Tensors are named ``global/<name>`` and ``payload/<client>/<name>``.
    """
    tensors = {f"global/{name}": t for name, t in state.items()}
    for client, payload in payloads.items():
        tensors.update({f"payload/{client}/{name}": t for name, t in payload.items()})
    return {"clients": sorted(payloads)}, tensors


def unpack_assignment(
    message: Message,
) -> tuple[list[int], dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """Return the clients, the global state and each client's payload of a ``SYNC_MODEL`` message.

    Raises
    ------
    ProtocolError
        If the message does not name its clients as a list of integers.

    """
    clients = message.metadata.get("clients")
    if not isinstance(clients, list) or not all(isinstance(c, int) for c in clients):
        raise ProtocolError(f"{message.describe()} does not name its clients")
    state = {k.removeprefix("global/"): t for k, t in message.tensors.items() if k.startswith("global/")}
    payloads: dict[int, dict[str, torch.Tensor]] = {}
    for client in clients:
        prefix = f"payload/{client}/"
        payloads[client] = {
            k.removeprefix(prefix): t for k, t in message.tensors.items() if k.startswith(prefix)
        }
    return clients, state, payloads


def pack_updates(updates: Sequence[Update]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Turn updates into message metadata and tensors (``"<i>/state/<name>"``, ``"<i>/extra/<name>"``)."""
    metadata = {
        "updates": [
            {
                "client": u.client_idx,
                "weight": u.weight,
                "metrics": u.metrics,
                "names": list(u.state),
                "extras": list(u.extras),
            }
            for u in updates
        ]
    }
    tensors = {f"{i}/state/{name}": t for i, u in enumerate(updates) for name, t in u.state.items()}
    tensors.update({f"{i}/extra/{name}": t for i, u in enumerate(updates) for name, t in u.extras.items()})
    return metadata, tensors


def unpack_updates(message: Message) -> list[Update]:
    """Rebuild the updates of a ``CLIENT_UPDATE`` message, checking that it is complete.

    Raises
    ------
    ProtocolError
        If the metadata or tensors do not describe a list of updates.

    """
    entries = message.metadata.get("updates")
    if not isinstance(entries, list):
        raise ProtocolError(f"{message.describe()} has no list of updates")
    updates = []
    for i, entry in enumerate(entries):
        try:
            state = {name: message.tensors[f"{i}/state/{name}"] for name in entry["names"]}
            extras = {name: message.tensors[f"{i}/extra/{name}"] for name in entry["extras"]}
            updates.append(
                Update(int(entry["client"]), float(entry["weight"]), state, dict(entry["metrics"]), extras)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"{message.describe()}: update {i} is incomplete ({exc!r})") from exc
    return updates


class RoundServer:
    """Runs every round of ``rounds`` by exchanging messages with workers over ``transport``.

    Parameters
    ----------
    rounds
        The server side of the round: sampling, aggregation, evaluation, tracking.
    transport
        Connects this process to the workers.
    workers
        The workers' addresses (ranks).
    timeout
        Seconds to wait for each worker's greeting and for each round's updates.

    """

    def __init__(
        self, rounds: FederatedRound, transport: Transport, workers: Sequence[int], timeout: float
    ) -> None:
        self.rounds = rounds
        self.transport = transport
        self.workers = list(workers)
        self.timeout = timeout
        self.log = rounds.log
        self.sample_counts = [rounds.dataset.local_sample_num(c) for c in range(rounds.dataset.client_num)]

    def run(self) -> RunResult:
        """Run all rounds; tell the workers to stop (with the result, or the error) and return the result."""
        rounds, args = self.rounds, self.rounds.args
        try:
            state = rounds.start()
            self._greet()
            for round_idx in progress(range(rounds.first_round, args.comm_round), "rounds"):
                updates = self.run_round(round_idx, state)
                state = rounds.finish(round_idx, state, updates)
        except BaseException as exc:
            rounds.tracker.fail(exc)
            self.log.error("Run failed: %s: %s", type(exc).__name__, exc)
            self._stop({"error": f"{type(exc).__name__}: {exc}"}, {})
            raise
        result = rounds.result()
        self._stop(
            {
                "final_metrics": result.final_metrics,
                "history": result.history,
                "run_dir": str(result.run_dir),
            },
            result.model_state,
        )
        return result

    def run_round(self, round_idx: int, state: dict[str, torch.Tensor]) -> list[Update]:
        """Send this round's work to the workers and return every client's update, in client order."""
        shares = assign_clients(self.rounds.clients(round_idx), self.sample_counts, self.workers)
        busy = {rank for rank, share in shares.items() if share}
        algorithm = self.rounds.algorithm
        for rank in sorted(busy):
            payloads = {c: algorithm.client_payload(c) for c in shares[rank]}
            metadata, tensors = pack_assignment(state, payloads)
            self.transport.send(Message(MessageKind.SYNC_MODEL, 0, rank, round_idx, metadata, tensors))
        updates: list[Update] = []
        for message in self._gather(MessageKind.CLIENT_UPDATE, round_idx, busy):
            updates.extend(unpack_updates(message))
        return sorted(updates, key=lambda u: u.client_idx)

    def _greet(self) -> None:
        client_num = self.rounds.dataset.client_num
        for message in self._gather(MessageKind.INIT, -1, set(self.workers)):
            if message.metadata.get("client_num") != client_num:
                raise ProtocolError(
                    f"worker rank {message.sender} has {message.metadata.get('client_num')} clients, the "
                    f"server {client_num}: every process must load the same configuration"
                )
        self.log.info("%d workers connected", len(self.workers))

    def _gather(self, kind: MessageKind, round_idx: int, pending: set[int]) -> list[Message]:
        deadline = time.monotonic() + self.timeout
        received = []
        while pending:
            waiting = f"worker rank(s) {sorted(pending)}"
            timed_out = TransportError(
                f"round {round_idx + 1}: no {kind.name} from {waiting} within {self.timeout} s "
                "(comm_args.timeout); a worker process probably died or hangs"
            )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out
            try:
                message = self.transport.receive(remaining)
            except ProtocolError as exc:
                self.log.warning("Ignored a malformed message: %s", exc)
                continue
            except TransportError as exc:
                if time.monotonic() >= deadline:
                    raise timed_out from exc
                raise TransportError(f"round {round_idx + 1}: waiting for {waiting}: {exc}") from exc
            if message.kind == MessageKind.ERROR:
                raise TransportError(f"worker rank {message.sender} failed: {message.metadata.get('error')}")
            if message.kind != kind or message.round_idx != round_idx or message.sender not in pending:
                self.log.warning("Ignored an unexpected message: %s", message.describe())
                continue
            pending.discard(message.sender)
            received.append(message)
        return received

    def _stop(self, metadata: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        for rank in self.workers:
            try:
                self.transport.send(Message(MessageKind.FINISH, 0, rank, -1, metadata, state))
            except TransportError as exc:
                self.log.warning("Could not tell worker rank %d to stop: %s", rank, exc)


class RoundWorker:
    """Trains the clients the server assigns, round after round, until the server says ``FINISH``.

    Parameters
    ----------
    transport
        Connects this process to the server.
    dataset
        Supplies each client's local training data.
    algorithm
        Its ``client_update`` trains one client.
    args, device, trainer, aggregator
        What the algorithm sees in its round context.
    timeout
        Seconds to wait for the server's next message.
    server
        The server's address.

    """

    def __init__(
        self,
        transport: Transport,
        dataset: FederatedDataset,
        algorithm: Algorithm,
        args: Any,
        device: torch.device,
        trainer: ClientTrainer,
        aggregator: ServerAggregator,
        timeout: float,
        server: int = 0,
    ) -> None:
        self.transport = transport
        self.dataset = dataset
        self.algorithm = algorithm
        self.args = args
        self.device = device
        self.trainer = trainer
        self.aggregator = aggregator
        self.timeout = timeout
        self.server = server
        self.log = role_logger("Client", transport.rank)

    def run(self) -> RunResult:
        """Serve rounds until ``FINISH``; return the run's result as the server reported it."""
        rank = self.transport.rank
        self.transport.send(
            Message(MessageKind.INIT, rank, self.server, -1, {"client_num": self.dataset.client_num})
        )
        while True:
            try:
                message = self.transport.receive(self.timeout)
            except ProtocolError as exc:
                self.log.warning("Ignored a malformed message: %s", exc)
                continue
            if message.kind == MessageKind.FINISH and message.sender == self.server:
                return self._result(message)
            if message.kind != MessageKind.SYNC_MODEL or message.sender != self.server:
                self.log.warning("Ignored an unexpected message: %s", message.describe())
                continue
            try:
                updates = self.train(message)
            except Exception as exc:
                self.transport.send(
                    Message(MessageKind.ERROR, rank, self.server, message.round_idx, {"error": repr(exc)})
                )
                raise
            metadata, tensors = pack_updates(updates)
            self.transport.send(
                Message(MessageKind.CLIENT_UPDATE, rank, self.server, message.round_idx, metadata, tensors)
            )

    def train(self, message: Message) -> list[Update]:
        """Train the clients named in a ``SYNC_MODEL`` message from the state it carries."""
        clients, state, payloads = unpack_assignment(message)
        ctx = RoundContext(message.round_idx, self.args, self.device, self.trainer, self.aggregator)
        self.log.debug("Round %d: training clients %s", message.round_idx + 1, clients)
        return [
            self.algorithm.client_update(state, Client(c, self.dataset.local_train(c), payloads[c]), ctx)
            for c in clients
        ]

    def _result(self, message: Message) -> RunResult:
        if "error" in message.metadata:
            raise FedMLError(f"the server ended the run: {message.metadata['error']}")
        meta = message.metadata
        self.log.info("Finished; the server saved the run in %s", meta.get("run_dir"))
        return RunResult(
            dict(meta.get("final_metrics", {})),
            list(meta.get("history", [])),
            Path(meta.get("run_dir", ".")),
            message.tensors,
        )
