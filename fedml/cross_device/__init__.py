"""Cross-device federated learning: many light edge devices and one server, through an MQTT broker.

The server is the cross-silo server with the ``FirstReplies`` policy: each round it selects
``over_selection`` times ``client_num_per_round`` of the devices online, aggregates the first
``client_num_per_round`` reports within ``round_timeout`` and drops the rest. A device runs the same
worker as a silo (``fedml.edge_runner``), started from a small edge configuration
(``fedml.init_edge``). Importing this package loads only the edge side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.cross_device.edge import EdgeRunner, edge_runner, init_edge

if TYPE_CHECKING:
    from fedml.runner import Runner


def cross_device_runner(
    args: Any, device: torch.device, dataset: Any, model: nn.Module, **custom: Any
) -> Runner:
    """Return the server (``--role server``) or an edge device (``--role client``) of a cross-device run."""
    if args.role == "server":
        from fedml.cross_device.server import CrossDeviceServer

        return CrossDeviceServer(args, device, dataset, model, **custom)
    from fedml.cross_silo import cross_silo_runner

    return cross_silo_runner(args, device, dataset, model, **custom)


__all__ = ["EdgeRunner", "cross_device_runner", "edge_runner", "init_edge"]
