"""Secure aggregation in the round: the step that checks it, the backends that run it, the peers' side.

With ``secure_aggregation_args.enable_secure_aggregation`` a round is the training stage, in which each
client trains and its update stays where it trained, then the four stages of the protocol (advertise
keys, share keys, masked input, unmask) with the server as ``SecAggServer`` and every client as a
``SecAggClient``. The server ends up with the weighted sum of the clients' vectors and their total
weight only, and the backend returns it as a ``SummedUpdate``, which the driver treats like NCCL's
pre-summed result (no server steps, the algorithm's server rule on the mean).

- ``SecureLocalBackend`` (sp): trains in this process, then runs the protocol among in-process parties
  with ``run_secagg_round`` (real cryptography, every message through the codec).
- ``SecureRemoteBackend`` (MPI, cross-silo) wraps ``RemoteBackend``: each protocol stage is a ``Stage``
  through ``RemoteBackend.exchange``, so the participation policy, deadlines and dropouts work as for
  training. A peer's request and reply bundle one protocol message per client it hosts
  (``MessageKind.SECURE_AGGREGATION``; a kind of its own, so a reply of a protocol stage can never be
  taken for a training reply); the server checks that every client a reply names is one the sending
  peer was asked about. ``SecureParty`` is the peer's side, installed as handlers of ``RoundWorker``.

What a client masks is its delta from the global model (floating-point tensors, flattened) followed by
its ``train_loss`` (clipped to ``sa_clip_range`` like every coordinate), weighted by its sample count;
the server's mean state is the global state plus the weighted mean delta. Integer buffers (a
batch-norm counter) are not summed: the global model's values are kept (a sum of counters means
nothing, and sending one in the clear would tell the server about its client). A round whose
protocol fails (too few clients left to rebuild the masks, a tampered or replayed message) raises
``SecAggError`` and the run fails closed; a stage that misses the participation policy raises
``RoundIncompleteError`` and the driver's retry rules apply (a retry starts a new session with new
keys and masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedml.config.sections import read_settings
from fedml.core.algorithms import Algorithm, SummedUpdate, Update
from fedml.core.comm import Message, MessageKind
from fedml.core.privacy.dp import clipped, delta_of
from fedml.core.privacy.secagg import STAGES, SecAggArgs, SecAggClient, SecAggServer, run_secagg_round
from fedml.core.privacy.secagg.messages import ADVERTISE, REPLY_KIND, REQUEST_KIND, UNMASK
from fedml.core.privacy.secagg.state import flatten_state, unflatten
from fedml.core.privacy.steps import CentralDP
from fedml.core.round.backend import LocalBackend, RoundTask
from fedml.core.round.driver import usable_updates
from fedml.core.round.remote import TRAIN, RemoteBackend, Stage
from fedml.core.round.wire import pack_assignment, unpack_assignment
from fedml.core.round.worker import RoundWorker
from fedml.core.steps import ServerStep, Steps
from fedml.errors import ProtocolError, SecAggError
from fedml.tracking import RunResult, role_logger

SECURE_STAGES = {
    name: Stage(name, MessageKind.SECURE_AGGREGATION, MessageKind.SECURE_AGGREGATION) for name in STAGES
}
"""The protocol's four stages as round stages, by protocol stage name."""


def secagg_settings(args: Any) -> SecAggArgs | None:
    """Return the run's ``secure_aggregation_args`` when they enable secure aggregation, else ``None``."""
    settings: SecAggArgs = read_settings(args, SecAggArgs)
    return settings if settings.enable_secure_aggregation else None


class SecureAggregation(ServerStep):
    """The server step of secure aggregation: it only checks, at start, that the run can hold.

    Unmasking happens in the backend (the server never holds an individual update to pass through a
    step); this step refuses what needs one, with ``SecAggError`` naming both.

    Parameters
    ----------
    settings
        ``secure_aggregation_args``.
    defense
        The robust rules of the run (``defense_args``).
    adaptive_cdp
        True when central DP adapts its clip bound (it counts unclipped deltas per client).
    dpsgd
        True when clients train with DP-SGD (accounted from each client's own report).

    """

    name = "secure aggregation"
    needs_individual_updates = False

    def __init__(
        self,
        settings: SecAggArgs,
        defense: Sequence[str] = (),
        adaptive_cdp: bool = False,
        dpsgd: bool = False,
    ) -> None:
        self.settings = settings
        self.defense = list(defense)
        self.adaptive_cdp = adaptive_cdp
        self.dpsgd = dpsgd

    def describe(self) -> str:
        """Return the method and its parameters, for the log."""
        s = self.settings
        return (
            f"Secure aggregation ({s.sa_method}): the server learns only the weighted sum of the clients' "
            f"deltas, clipped to +-{s.sa_clip_range:g} and quantized to {s.sa_bit_width} bits"
        )

    def check(self, algorithm: Algorithm, backend: str, engine: str | None, presummed: bool) -> None:
        """Refuse NCCL, algorithms that need each update, robust rules, adaptive clipping and DP-SGD.

        Raises
        ------
        SecAggError
            Naming secure aggregation and what it cannot work with.

        """
        why = "secure_aggregation_args.enable_secure_aggregation: the server sees only the sum of the updates"
        if backend == "NCCL":
            raise SecAggError(
                f"{why}; comm_args.backend NCCL all-reduces them in the clear on every rank; use sp, MPI, "
                "GRPC or MQTT"
            )
        if not algorithm.accepts_presummed_updates:
            raise SecAggError(
                f"{why}, which train_args.federated_optimizer {algorithm.name} cannot use (it needs every "
                "client's update); use FedAvg, FedProx or FedOpt"
            )
        if self.defense:
            raise SecAggError(
                f"{why}, which defense_args.defense_type {self.defense[0]} cannot filter (it needs every "
                "client's update); turn the defense off or secure aggregation off"
            )
        if self.adaptive_cdp:
            raise SecAggError(
                f"{why}, so dp_args.adaptive_clipping cannot count the unclipped deltas; use a fixed "
                "dp_args.clipping_norm"
            )
        if self.dpsgd:
            raise SecAggError(
                f"{why}, so dp_args.dp_solution_type dpsgd cannot be accounted from each client's report; "
                "use ldp or cdp"
            )


def secure_aggregation_step(args: Any) -> SecureAggregation | None:
    """Return the step when ``secure_aggregation_args`` enables it, else ``None``."""
    from fedml.core.privacy.settings import DPArgs
    from fedml.core.robust import defense_chain

    settings = secagg_settings(args)
    if settings is None:
        return None
    dp = read_settings(args, DPArgs)
    mode = dp.dp_solution_type if dp.enable_dp else None
    adaptive = bool(mode == "cdp" and dp.adaptive_clipping)
    return SecureAggregation(settings, defense_chain(args.defense_args), adaptive, mode == "dpsgd")


def client_input(
    update: Update, global_state: Mapping[str, torch.Tensor], central_clip: float | None = None
) -> tuple[torch.Tensor, float]:
    """Return what a client masks: its flat delta with its ``train_loss`` appended, and its weight.

    With central DP (``central_clip``) the delta is first clipped to that L2 norm and the weight is 1:
    DP-FedAvg's equal-weight mean of clipped deltas, clipped where the client is, before masking.
    """
    state, weight = update.state, update.weight
    if central_clip is not None:
        state, _ = clipped(state, dict(global_state), central_clip)
        weight = 1.0
    delta = delta_of(state, dict(global_state))
    # In the global state's order: the server rebuilds the mean from the global state's layout.
    vector, _ = flatten_state({k: delta[k] for k in global_state if k in delta})
    loss = torch.tensor([float(update.metrics.get("train_loss", 0.0))], dtype=torch.float32)
    return torch.cat([vector, loss]), weight


def summed_update(
    total: torch.Tensor, weight: float, clients: int, global_state: Mapping[str, torch.Tensor]
) -> SummedUpdate:
    """Return the ``SummedUpdate`` of an unmasked sum of ``client_input`` vectors and their total weight.

    Raises
    ------
    SecAggError
        If the total weight is not positive.

    """
    if weight <= 0:
        raise SecAggError(f"secure aggregation: the unmasked total weight is {weight}, not positive")
    floats = {k: t for k, t in global_state.items() if t.dtype.is_floating_point}
    _, spec = flatten_state(floats)
    mean = (total / weight).to(torch.float64)
    delta = unflatten(mean[:-1], spec)
    state = {
        k: (t + delta[k].to(t.device, t.dtype)) if k in delta else t.clone() for k, t in global_state.items()
    }
    return SummedUpdate(clients, weight, state, {"train_loss": float(mean[-1])})


def _central_dp(steps: Steps) -> CentralDP | None:
    return next((s for s in steps.server if isinstance(s, CentralDP)), None)


def _noised(summed: SummedUpdate, central: CentralDP | None, round_idx: int) -> SummedUpdate:
    if central is None:
        return summed
    return central.noise_presummed(summed, round_idx)


class SecureLocalBackend:
    """sp with secure aggregation: trains clients in this process, then sums them through the protocol.

    Parameters
    ----------
    local
        Trains the round's clients (with the client steps: local DP noise comes before masking).
    settings
        ``secure_aggregation_args``.
    steps
        The run's chains (central DP's clip bound and noise, when on).

    """

    presummed = True
    retries = 0

    def __init__(self, local: LocalBackend, settings: SecAggArgs, steps: Steps) -> None:
        self.local = local
        self.settings = settings
        self.name = local.name
        self.central = _central_dp(steps)
        self.log = role_logger("Server", 0)

    def open(self) -> None:
        """Nothing to prepare."""

    def clients(self) -> list[int]:
        """Return every client id."""
        return self.local.clients()

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted``."""
        return wanted

    def train(self, task: RoundTask) -> SummedUpdate:
        """Train the task's clients, mask, sum and unmask their inputs; return the mean.

        Raises
        ------
        SecAggError
            If the round's protocol fails.

        """
        state = task.global_state
        updates = usable_updates(task.round_idx, self.local.train(task), self.log, state)
        clip = self.central.clipping_norm if self.central is not None else None
        inputs = {str(u.client_idx): client_input(u, state, clip) for u in updates}
        total, weight, _ = run_secagg_round(
            {c: v for c, (v, _) in inputs.items()},
            {c: w for c, (_, w) in inputs.items()},
            self.settings,
            round_idx=task.round_idx,
            keep_messages=False,
        )
        return _noised(summed_update(total, weight, len(inputs), state), self.central, task.round_idx)

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """Nothing to release."""


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
        self.central = _central_dp(steps)

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
        return _noised(summed, self.central, round_idx)

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
        central = _central_dp(steps)
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


def check_secure(steps: Steps, algorithm: Algorithm, backend: str) -> None:
    """Refuse, before the driver's own checks, what secure aggregation cannot hold (``SecAggError``).

    The driver's check would name the algorithm's need for individual updates without saying it is
    secure aggregation that hides them.
    """
    for step in steps.server:
        if isinstance(step, SecureAggregation):
            step.check(algorithm, backend, None, True)


def secure_local(
    local: LocalBackend, args: Any, steps: Steps, algorithm: Algorithm
) -> LocalBackend | SecureLocalBackend:
    """Return ``local``, or the secure sp backend around it when ``secure_aggregation_args`` enable it."""
    settings = secagg_settings(args)
    if settings is None:
        return local
    check_secure(steps, algorithm, local.name)
    return SecureLocalBackend(local, settings, steps)


def secure_remote(
    remote: RemoteBackend, args: Any, steps: Steps, algorithm: Algorithm
) -> RemoteBackend | SecureRemoteBackend:
    """Return ``remote``, or the secure backend around it when ``secure_aggregation_args`` enable it."""
    settings = secagg_settings(args)
    if settings is None:
        return remote
    check_secure(steps, algorithm, remote.name)
    return SecureRemoteBackend(remote, settings, steps)


def secure_worker(worker: RoundWorker, args: Any, steps: Steps) -> RoundWorker:
    """Return ``worker``, with ``SecureParty``'s handlers when ``secure_aggregation_args`` enable it."""
    settings = secagg_settings(args)
    if settings is not None:
        SecureParty(worker, settings, steps)
    return worker
