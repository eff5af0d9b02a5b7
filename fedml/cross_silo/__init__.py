"""Cross-silo federated learning: one server process and one process per silo, over gRPC or MQTT.

The server runs the one round driver over ``RemoteBackend`` with the ``Quorum`` policy; each silo runs
``RoundWorker`` over the same in-process backend a simulation uses. Only the transport and the policy
differ from MPI simulation. ``cross_silo_runner`` picks the side by ``--role``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedml.cross_silo.client import CrossSiloClient
from fedml.cross_silo.server import CrossSiloServer
from fedml.errors import ConfigError


def cross_silo_runner(
    args: Any, device: torch.device, dataset: Any, model: nn.Module, **custom: Any
) -> CrossSiloServer | CrossSiloClient:
    """Return the server (``--role server``, rank 0) or the silo (``--role client``, rank >= 1) of a run.

    Raises
    ------
    ConfigError
        For a role other than ``server``/``client``, or a rank that does not fit the role.

    """
    if args.role == "server":
        if args.rank != 0:
            raise ConfigError(f"--role server runs as --rank 0, got --rank {args.rank}")
        return CrossSiloServer(args, device, dataset, model, **custom)
    if args.role == "client":
        if args.rank < 1:
            raise ConfigError(f"--role client needs --rank 1 or more (rank 0 is the server), got {args.rank}")
        return CrossSiloClient(args, device, dataset, model, **custom)
    raise ConfigError(f"--role {args.role!r}: a cross-silo process is a 'server' or a 'client'")


__all__ = ["CrossSiloClient", "CrossSiloServer", "cross_silo_runner"]
