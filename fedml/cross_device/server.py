"""The cross-device server: the cross-silo server with over-selection and the first reports."""

from __future__ import annotations

import math
from typing import Any

from fedml.core.round import FirstReplies, ParticipationPolicy
from fedml.cross_silo.server import CrossSiloServer, quorum
from fedml.errors import NotSupportedError


class CrossDeviceServer(CrossSiloServer):
    """Coordinates edge devices that come and go: each round over-selects and keeps the first reports.

    ``train_args.over_selection`` (1.3: 30% more) says how many devices to ask; the first
    ``client_num_per_round`` reports within ``comm_args.round_timeout`` are aggregated and later ones
    dropped with one log line; with fewer than ``min_clients_per_round`` the round is retried.

    Raises
    ------
    NotSupportedError
        For an algorithm that keeps state per client (SCAFFOLD, FedDyn): devices need not come back.

    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.algorithm.keeps_client_state:
            raise NotSupportedError(
                f"train_args.federated_optimizer {self.args.federated_optimizer} keeps state per client "
                "between rounds, which cross-device devices (that come and go) cannot serve; use FedAvg, "
                "FedProx, FedOpt or FedNova"
            )

    def joining(self) -> tuple[int, int, int]:
        """Wait for as many devices as a round selects (``over_selection`` included) before round 1."""
        wanted, start, replies = quorum(self.args)
        selected = math.ceil(wanted * self.args.over_selection)
        return selected, start, replies

    def policy(self, replies: int) -> ParticipationPolicy:
        """Return ``FirstReplies``: ask ``over_selection`` times more, keep the first reports."""
        args = self.args
        return FirstReplies(args.round_timeout or args.timeout, args.over_selection - 1, replies)
