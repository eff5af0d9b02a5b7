"""``SecureRemoteBackend``: the protocol's stages through ``RemoteBackend.exchange`` (MPI, cross-silo)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedml.core.algorithms import SummedUpdate
from fedml.core.comm import Message, MessageKind
from fedml.core.privacy.secagg import STAGES, SecAggArgs, SecAggServer
from fedml.core.privacy.secagg.messages import REPLY_KIND
from fedml.core.round.backend import RoundTask
from fedml.core.round.remote import TRAIN, RemoteBackend
from fedml.core.round.secure.step import SECURE_STAGES, central_dp, noised, summed_update
from fedml.core.round.wire import pack_assignment
from fedml.core.steps import Steps
from fedml.errors import SecAggError
from fedml.tracking import RunResult


def bundle(
    stage: str, parts: Sequence[tuple[dict[str, Any], dict[str, torch.Tensor]]]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return one peer's message of ``stage``: the protocol messages of the clients it hosts, in one."""
    metadata = {"stage": stage, "parts": [meta for meta, _ in parts]}
    tensors = {f"{i}/{name}": t for i, (_, named) in enumerate(parts) for name, t in named.items()}
    return metadata, tensors


def unbundle(message: Message, stage: str, kind: MessageKind) -> list[Message]:
    """Return the protocol messages (of ``kind``) that a peer's ``stage`` message holds, one per client.

    Raises
    ------
    SecAggError
        If the message is of another stage or its parts are malformed.

    """
    meta = message.metadata
    parts = meta.get("parts")
    if (
        meta.get("stage") != stage
        or not isinstance(parts, list)
        or not all(isinstance(p, dict) for p in parts)
    ):
        raise SecAggError(
            f"secure aggregation: expected the {stage} parts from peer {message.sender}, got stage "
            f"{meta.get('stage')!r:.40}"
        )
    out = []
    for i, part in enumerate(parts):
        prefix = f"{i}/"
        tensors = {k.removeprefix(prefix): t for k, t in message.tensors.items() if k.startswith(prefix)}
        out.append(Message(kind, message.sender, message.receiver, message.round_idx, dict(part), tensors))
    return out


class SecureRemoteBackend:
    """MPI and cross-silo with secure aggregation: the server's side over a ``RemoteBackend``.

    Parameters
    ----------
    remote
        The server's backend over the transport (its policy decides when each stage is complete).
    settings
        ``secure_aggregation_args``.
    steps
        The run's chains (central DP's noise, when on).

    """

    presummed = True

    def __init__(self, remote: RemoteBackend, settings: SecAggArgs, steps: Steps) -> None:
        self.remote = remote
        self.settings = settings
        self.name = remote.name
        self.retries = remote.retries
        self.central = central_dp(steps)

    def open(self) -> None:
        """Wait for the peers (``RemoteBackend.open``)."""
        self.remote.open()

    def clients(self) -> list[int]:
        """Return the clients hosted by online peers."""
        return self.remote.clients()

    def selection_size(self, wanted: int) -> int:
        """Return the policy's selection size."""
        return self.remote.selection_size(wanted)

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """Tell every online peer to stop."""
        self.remote.close(result, error)

    def train(self, task: RoundTask) -> SummedUpdate:
        """Have the peers train, then run the protocol's four stages with them; return the mean.

        Raises
        ------
        SecAggError
            If the protocol fails, or a peer sends an update in the clear or names a client it was
            not asked about.
        RoundIncompleteError
            If a stage misses its participation policy.

        """
        round_idx, remote = task.round_idx, self.remote
        shares = {peer: share for peer, share in remote.assignment(task.clients).items() if share}
        requests = {}
        for peer, share in shares.items():
            metadata, tensors = pack_assignment(
                task.global_state, {c: task.payloads.get(c, {}) for c in share}
            )
            requests[peer] = ({**metadata, "secure": True}, tensors)
        sizes = {peer: len(share) for peer, share in shares.items()}
        replies = remote.exchange(TRAIN, round_idx, requests, sizes, task.wanted)
        host: dict[str, str] = {}
        for peer, message in replies.items():
            for trained in self._trained(message, shares[peer]):
                host[str(trained)] = peer
        server = SecAggServer(self.settings, round_idx, sorted(host, key=int))
        for stage in STAGES:
            by_peer: dict[str, list[tuple[dict[str, Any], dict[str, torch.Tensor]]]] = {}
            for client, request in server.requests().items():
                by_peer.setdefault(host[client], []).append(request.payload())
            asked = {peer: {p[0]["client"] for p in parts} for peer, parts in by_peer.items()}
            got = remote.exchange(
                SECURE_STAGES[stage],
                round_idx,
                {peer: bundle(stage, parts) for peer, parts in by_peer.items()},
                {peer: len(parts) for peer, parts in by_peer.items()},
                sum(len(parts) for parts in by_peer.values()),
            )
            for peer, message in got.items():
                for part in unbundle(message, stage, REPLY_KIND):
                    if part.metadata.get("client") not in asked[peer]:
                        raise SecAggError(
                            f"secure aggregation: peer {peer} sent a {stage} reply for client "
                            f"{part.metadata.get('client')!r:.40}, which it was not asked about"
                        )
                    server.receive(part)
            server.close_stage()
        total, weight = server.result()
        masked, answered = server.survivors[2], server.survivors[3]
        remote.log.info(
            "Round %d: secure aggregation unmasked the sum of %d masked inputs (%d clients unmasked, "
            "%d dropped before); no individual update reached the server",
            round_idx + 1,
            len(masked),
            len(answered),
            len(server.client_ids) - len(masked),
        )
        summed = summed_update(total, weight, len(masked), task.global_state)
        return noised(summed, self.central, round_idx)

    @staticmethod
    def _trained(message: Message, share: Sequence[int]) -> list[int]:
        """Return the clients a secure training reply says trained, refusing one that carries updates."""
        trained = message.metadata.get("trained")
        if message.tensors or "updates" in message.metadata or not message.metadata.get("secure"):
            raise SecAggError(
                f"secure aggregation: peer {message.sender} sent its updates in the clear; every process "
                "must enable secure_aggregation_args"
            )
        if not isinstance(trained, list) or not set(trained) <= set(share):
            raise SecAggError(
                f"secure aggregation: peer {message.sender} reports training clients it was not assigned"
            )
        return [int(c) for c in trained]
