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

from typing import Any

from fedml.core.algorithms import Algorithm
from fedml.core.round.backend import LocalBackend
from fedml.core.round.remote import RemoteBackend
from fedml.core.round.secure.local import SecureLocalBackend
from fedml.core.round.secure.party import SecureParty
from fedml.core.round.secure.remote import SecureRemoteBackend
from fedml.core.round.secure.step import SecureAggregation, secagg_settings, secure_aggregation_step
from fedml.core.round.worker import RoundWorker
from fedml.core.steps import Steps


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


__all__ = [
    "SecureAggregation",
    "SecureLocalBackend",
    "SecureParty",
    "SecureRemoteBackend",
    "check_secure",
    "secagg_settings",
    "secure_aggregation_step",
    "secure_local",
    "secure_remote",
    "secure_worker",
]
