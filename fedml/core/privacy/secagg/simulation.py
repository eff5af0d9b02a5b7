"""``run_secagg_round``: a whole secure-aggregation round in one process, every message through the codec.

For tests and the benchmark: each party runs its real state machine, every message is encoded to bytes
and decoded again on the way (so what the server sees is exactly what a transport would carry), and
the ``Transcript`` keeps what crossed the wire, its size and each party's compute time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fedml.core.comm import codec
from fedml.core.comm.message import Message
from fedml.core.privacy.secagg.client import SecAggClient
from fedml.core.privacy.secagg.messages import ADVERTISE, MASKED, SHARE, STAGES, UNMASK
from fedml.core.privacy.secagg.server import SecAggServer
from fedml.core.privacy.secagg.settings import SecAggArgs

SERVER = "server"
"""The server's peer id in a simulated round."""


@dataclass
class WireRecord:
    """One message that crossed the simulated wire: its stage, ends and encoded size (and itself, if kept)."""

    stage: str
    sender: str
    receiver: str
    nbytes: int
    message: Message | None


@dataclass
class Transcript:
    """What a simulated round sent and received, and what it cost.

    Attributes
    ----------
    to_server, to_clients
        Every message in each direction, in order (``message`` is ``None`` unless kept).
    client_seconds
        Each client's compute time: its stage methods, and encoding and decoding its messages.
    server_seconds
        The server's compute time, likewise.
    survivors
        The clients left after each closed stage (U1 .. U4).

    """

    to_server: list[WireRecord] = field(default_factory=list)
    to_clients: list[WireRecord] = field(default_factory=list)
    client_seconds: dict[str, float] = field(default_factory=dict)
    server_seconds: float = 0.0
    survivors: list[frozenset[str]] = field(default_factory=list)

    @property
    def bytes_on_wire(self) -> int:
        """Total size of every encoded message, both directions."""
        return sum(r.nbytes for r in (*self.to_server, *self.to_clients))

    def received(self, stage: str | None = None) -> list[Message]:
        """Return the kept messages the server received (of ``stage``, or all)."""
        return [r.message for r in self.to_server if r.message is not None and stage in (None, r.stage)]


def run_secagg_round(
    vectors_by_client: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    settings: SecAggArgs,
    drop_after_advertise: Collection[str] = (),
    drop_after_share: Collection[str] = (),
    drop_after_masked: Collection[str] = (),
    seed: int | None = None,
    round_idx: int = 0,
    tamper: Callable[[Message], Message] | None = None,
    keep_messages: bool = True,
    transcript: Transcript | None = None,
) -> tuple[torch.Tensor, float, Transcript]:
    """Run one round among the clients of ``vectors_by_client`` and return the server's result.

    Parameters
    ----------
    vectors_by_client
        Each client's flat float update.
    weights
        Each client's weight.
    settings
        ``secure_aggregation_args``.
    drop_after_advertise, drop_after_share, drop_after_masked
        Clients that go silent after sending their keys, their shares, or their masked input.
    seed
        Makes keys, masks, the session and the graph reproducible; ``None`` uses the OS CSPRNG.
    round_idx
        The round's index.
    tamper
        Called on every decoded message before its receiver sees it (an adversary on the wire).
    keep_messages
        Keep each decoded message in the transcript (the benchmark turns it off to save memory).
    transcript
        Filled in place if given, so a test still has it when the round raises.

    Returns
    -------
    tuple
        The weighted sum of the inputs of the clients whose masked input arrived (float64), their
        total weight, and the transcript.

    Raises
    ------
    SecAggError
        If the round fails (too few survivors, a share that fails authentication, a replay).

    """
    record = Transcript() if transcript is None else transcript
    ids = list(vectors_by_client)
    streams = np.random.SeedSequence(seed).spawn(len(ids) + 1) if seed is not None else None
    server_rng = np.random.default_rng(streams[0]) if streams else None
    started = time.perf_counter()
    server = SecAggServer(settings, round_idx, ids, rng=server_rng)
    clients = {}
    for i, client in enumerate(ids):
        rng = np.random.default_rng(streams[i + 1]) if streams else None
        clients[client] = SecAggClient(client, settings, round_idx, rng=rng)
        record.client_seconds[client] = 0.0
    record.server_seconds += time.perf_counter() - started
    silent = {ADVERTISE: (), SHARE: drop_after_advertise, MASKED: drop_after_share, UNMASK: drop_after_masked}
    gone: set[str] = set()

    def wire(message: Message, stage: str, out: list[WireRecord]) -> tuple[Message, float, float]:
        start = time.perf_counter()
        data = codec.encode(message)
        middle = time.perf_counter()
        received = codec.decode(data)
        end = time.perf_counter()
        if tamper is not None:
            received = tamper(received)
        kept = received if keep_messages else None
        out.append(WireRecord(stage, message.sender, message.receiver, len(data), kept))
        return received, middle - start, end - middle

    for stage in STAGES:
        start = time.perf_counter()
        requests = server.requests()
        record.server_seconds += time.perf_counter() - start
        gone |= set(silent[stage])
        for client, request in requests.items():
            start = time.perf_counter()
            outgoing = request.to_message(SERVER, client)
            record.server_seconds += time.perf_counter() - start
            message, sending, receiving = wire(outgoing, stage, record.to_clients)
            record.server_seconds += sending
            record.client_seconds[client] += receiving
            if client in gone:
                continue
            party = clients[client]
            start = time.perf_counter()
            if stage == MASKED:
                party.set_input(vectors_by_client[client], weights[client])
            reply = party.respond(message).to_message(client, SERVER)
            record.client_seconds[client] += time.perf_counter() - start
            message, sending, receiving = wire(reply, stage, record.to_server)
            record.client_seconds[client] += sending
            start = time.perf_counter()
            server.receive(message)
            record.server_seconds += receiving + time.perf_counter() - start
        start = time.perf_counter()
        server.close_stage()
        record.server_seconds += time.perf_counter() - start
        record.survivors = list(server.survivors)
    start = time.perf_counter()
    total, weight = server.result()
    record.server_seconds += time.perf_counter() - start
    return total, weight, record
