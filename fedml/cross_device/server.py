"""The cross-device server: the cross-silo server with over-selection and the first reports, or FedBuff."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedml.core.comm import Transport
from fedml.core.comm.network import open_transport
from fedml.core.round import FederatedRound, FirstReplies, ParticipationPolicy
from fedml.cross_device.devices import DeviceBackend
from fedml.cross_silo.server import CrossSiloServer, quorum
from fedml.errors import NotSupportedError
from fedml.tracking import RunResult


class CrossDeviceServer(CrossSiloServer):
    """Coordinates edge devices that come and go: over-selected synchronous rounds, or FedBuff.

    ``train_args.aggregation_mode: sync`` (default): ``train_args.over_selection`` (1.3: 30% more)
    says how many devices to ask; the first ``client_num_per_round`` reports within
    ``comm_args.round_timeout`` are aggregated and later ones dropped with one log line; with fewer
    than ``min_clients_per_round`` the round is retried. ``async``: FedBuff
    (``fedml.cross_device.buffered``), one aggregation per ``buffer_size`` reports. Either way the
    server keeps a device registry, written to ``devices.json`` in the run directory.

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

    def run(self) -> RunResult:
        """Serve the run to its end and return its result."""
        args = self.args
        rounds = self.rounds()
        wanted, _, _ = self.joining()
        with open_transport(args, "0", server=True, log=rounds.log) as link:
            rounds.log.info(
                "Serving %s devices (aggregation_mode %s) through the broker %s:%s; waiting for %d",
                args.backend,
                args.aggregation_mode,
                args.host,
                link.port,
                wanted,
            )
            return rounds.run(self.backend(link, rounds))

    def backend(self, link: Transport, rounds: FederatedRound) -> DeviceBackend:
        """Return the backend of ``aggregation_mode``: ``DeviceBackend`` (sync) or ``BufferedBackend``."""
        args = self.args
        wanted, start, replies = self.joining()

        def run_dir() -> Path | None:
            return rounds.tracker.run_dir if rounds.tracker is not None else None

        common: dict[str, Any] = {
            "min_peers": wanted,
            "start_with": start,
            "join_timeout": args.join_timeout,
            "client_num": self.dataset.client_num,
            "retries": args.round_retries,
            "log": rounds.log,
            "run_dir": run_dir,
        }
        if args.aggregation_mode == "sync":
            return DeviceBackend(link, self.policy(replies), args.backend, min_online=replies, **common)
        from fedml.cross_device.buffered import BufferedBackend

        buffer_size = args.buffer_size or args.client_num_per_round
        concurrency = args.max_concurrency or math.ceil(args.over_selection * args.client_num_per_round)
        return BufferedBackend(
            link,
            FirstReplies(args.round_timeout or args.timeout, 0.0, min(replies, buffer_size)),
            args.backend,
            min_online=1,
            buffer_size=buffer_size,
            max_concurrency=concurrency,
            weighting=args.staleness_weight,
            max_staleness=args.max_staleness,
            seed=args.random_seed,
            **common,
        )
