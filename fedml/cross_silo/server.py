"""The cross-silo server: the round driver over the network, waiting for silos by a quorum policy."""

from __future__ import annotations

from typing import Any

from fedml.core.comm.network import open_transport
from fedml.core.round import ParticipationPolicy, Quorum, RemoteBackend
from fedml.core.round.secure import secure_remote
from fedml.simulation.base import Simulator
from fedml.tracking import RunResult


def quorum(args: Any) -> tuple[int, int, int]:
    """Return ``(silos to wait for, silos enough to start, replies a round needs)`` of a cross-silo run.

    The server waits for ``client_num_per_round`` silos to join, or when ``join_timeout`` passes starts
    with ``comm_args.min_clients`` (default: all of them); a round goes on with
    ``comm_args.min_clients_per_round`` replies when the others miss ``round_timeout`` (default: a
    majority of ``client_num_per_round``).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> quorum(SimpleNamespace(min_clients=None, min_clients_per_round=None, client_num_per_round=5))
    (5, 5, 3)

    """
    wanted = args.client_num_per_round
    replies = args.min_clients_per_round or wanted // 2 + 1
    return wanted, min(args.min_clients or wanted, wanted), min(replies, wanted)


class CrossSiloServer(Simulator):
    """Coordinates the silos: ``comm_round`` rounds of the configured algorithm over gRPC or MQTT.

    It waits for the silos to join (``comm_args.min_clients`` within ``join_timeout``), then each round
    samples from the silos online, sends each its task and goes on with the updates that arrive within
    ``round_timeout`` if at least ``min_clients_per_round`` did; a round with fewer is retried
    (``round_retries``). Late, stale and duplicate updates are dropped with one log line; a silo that
    restarts rejoins and gets the current round again. Only this process writes the run directory.

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``Simulator``; the server evaluates on ``dataset.test_global``.

    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend_name = self.args.backend

    def joining(self) -> tuple[int, int, int]:
        """Return ``(silos to wait for, silos enough to start, replies a round needs)`` (``quorum``)."""
        return quorum(self.args)

    def policy(self, replies: int) -> ParticipationPolicy:
        """Return ``Quorum``: everyone selected within ``round_timeout``, else at least ``replies``."""
        return Quorum(self.args.round_timeout or self.args.timeout, replies)

    def run(self) -> RunResult:
        """Serve the run to its end and return its result."""
        args = self.args
        rounds = self.rounds()
        wanted, start, replies = self.joining()
        with open_transport(args, "0", server=True, log=rounds.log) as link:
            rounds.log.info(
                "Serving %s on %s:%s; waiting for %d silo(s)", args.backend, args.host, link.port, wanted
            )
            backend = RemoteBackend(
                link,
                self.policy(replies),
                args.backend,
                min_peers=wanted,
                start_with=start,
                join_timeout=args.join_timeout,
                min_online=replies,
                client_num=self.dataset.client_num,
                retries=args.round_retries,
                log=rounds.log,
            )
            return rounds.run(secure_remote(backend, args, self.steps, self.algorithm))
