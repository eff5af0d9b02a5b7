"""``SecureParty``: a peer's side of secure aggregation, as handlers of ``RoundWorker``."""

from __future__ import annotations

from typing import Any

import torch

from fedml.core.comm import Message, MessageKind
from fedml.core.privacy.secagg import SecAggArgs, SecAggClient
from fedml.core.privacy.secagg.messages import ADVERTISE, REQUEST_KIND, UNMASK
from fedml.core.round.backend import RoundTask
from fedml.core.round.driver import usable_updates
from fedml.core.round.remote import TRAIN
from fedml.core.round.secure.remote import bundle, unbundle
from fedml.core.round.secure.step import central_dp, client_input
from fedml.core.round.wire import unpack_assignment
from fedml.core.round.worker import RoundWorker
from fedml.core.steps import Steps
from fedml.errors import ProtocolError, SecAggError


class SecureParty:
    """A peer's side of secure aggregation: one ``SecAggClient`` per client it hosts and trains.

    Installs itself as ``worker``'s handlers of training requests (the update stays here) and of the
    protocol's stages.

    Parameters
    ----------
    worker
        The peer.
    settings
        ``secure_aggregation_args``.
    steps
        The run's chains (central DP's clip bound, applied here before masking).

    """

    def __init__(self, worker: RoundWorker, settings: SecAggArgs, steps: Steps) -> None:
        self.worker = worker
        self.settings = settings
        central = central_dp(steps)
        self.central_clip = central.clipping_norm if central is not None else None
        self.round_idx = -1
        self.inputs: dict[str, tuple[torch.Tensor, float]] = {}
        self.parties: dict[str, SecAggClient] = {}
        worker.handlers[TRAIN.request] = self.train
        worker.handlers[MessageKind.SECURE_AGGREGATION] = self.respond

    def train(self, message: Message) -> tuple[MessageKind, dict[str, Any], dict[str, torch.Tensor]]:
        """Train the assigned clients and keep their masked inputs' plaintext here; reply who trained.

        Raises
        ------
        ProtocolError
            If the server does not run secure aggregation (this peer never sends an update in the clear).

        """
        if not message.metadata.get("secure"):
            raise ProtocolError(
                f"peer {self.worker.transport.address} enables secure_aggregation_args but the server "
                "asked for updates in the clear: every process must load the same configuration"
            )
        clients, state, payloads = unpack_assignment(message)
        task = RoundTask(message.round_idx, state, clients, payloads, len(clients))
        updates = usable_updates(message.round_idx, self.worker.backend.train(task), self.worker.log, state)
        self.round_idx = message.round_idx
        self.inputs = {str(u.client_idx): client_input(u, state, self.central_clip) for u in updates}
        self.parties = {}
        trained = sorted(u.client_idx for u in updates)
        return TRAIN.reply, {"secure": True, "trained": trained}, {}

    def respond(self, message: Message) -> tuple[MessageKind, dict[str, Any], dict[str, torch.Tensor]]:
        """Answer one stage of the protocol for every client the request names.

        Raises
        ------
        SecAggError
            If the request is of another round, names a client this peer did not train, or a client's
            state machine refuses it (replayed, out of stage, tampered).

        """
        stage = str(message.metadata.get("stage"))
        if message.round_idx != self.round_idx:
            raise SecAggError(
                f"secure aggregation: peer {self.worker.transport.address} got a {stage:.20} request of "
                f"round {message.round_idx + 1} but trained round {self.round_idx + 1}"
            )
        parts = []
        for request in unbundle(message, stage, REQUEST_KIND):
            client = str(request.metadata.get("client"))
            if stage == ADVERTISE and client in self.inputs and client not in self.parties:
                party = SecAggClient(client, self.settings, message.round_idx)
                party.set_input(*self.inputs[client])
                self.parties[client] = party
            if client not in self.parties:
                raise SecAggError(
                    f"secure aggregation: peer {self.worker.transport.address} was asked about client "
                    f"{client:.40}, which it did not train in round {message.round_idx + 1}"
                )
            parts.append(self.parties[client].respond(request).payload())
        if stage == UNMASK:
            self.inputs = {}
        return MessageKind.SECURE_AGGREGATION, *bundle(stage, parts)
