"""The round, written once: the driver, the backends it runs on, and when a stage is complete.

``FederatedRound.run(backend)`` is the only round loop in fedml. ``LocalBackend`` trains clients in
this process, ``RemoteBackend`` on peers over a transport (MPI today), and the NCCL simulation's
all-reduce backend sums them on torch.distributed ranks.
"""

from fedml.core.round.backend import Backend, BatchTrainer, LocalBackend, RoundTask
from fedml.core.round.driver import FederatedRound, train_loss, usable_updates
from fedml.core.round.policy import AllReplies, FirstReplies, ParticipationPolicy, Quorum
from fedml.core.round.remote import TRAIN, Peer, RemoteBackend, Stage, assign_clients
from fedml.core.round.worker import RoundWorker, server_wait

__all__ = [
    "TRAIN",
    "AllReplies",
    "Backend",
    "BatchTrainer",
    "FederatedRound",
    "FirstReplies",
    "LocalBackend",
    "ParticipationPolicy",
    "Peer",
    "Quorum",
    "RemoteBackend",
    "RoundTask",
    "RoundWorker",
    "Stage",
    "assign_clients",
    "server_wait",
    "train_loss",
    "usable_updates",
]
