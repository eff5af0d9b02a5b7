"""MPI simulation: rank 0 runs the round driver over the MPI transport, ranks 1..N-1 train their share.

This is ``RemoteBackend``/``RoundWorker`` over the MPI transport with the ``AllReplies`` policy;
nothing of the round is specific to MPI.
"""

from __future__ import annotations

import logging

from fedml.core.comm.base import JobTransport
from fedml.core.comm.mpi import MPITransport
from fedml.core.round import AllReplies, RemoteBackend, RoundWorker, server_wait
from fedml.core.round.secure import secure_remote, secure_worker
from fedml.errors import ConfigError, TransportError
from fedml.simulation.base import Simulator
from fedml.simulation.topologies import run_topology
from fedml.tracking import RunResult, role_logger


class MPISimulator(Simulator):
    """Runs the simulation across the ranks of ``MPI.COMM_WORLD`` (launch with ``mpirun -np N``, N >= 2).

    Every rank returns the same ``RunResult`` (metrics, history, run directory and final state); only
    rank 0 writes the run directory and prints the server's lines. A transport failure (a worker that
    died or hangs past ``comm_args.timeout``) is logged on the rank that sees it and aborts the whole MPI
    job, so no rank is left waiting.

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``Simulator``.

    """

    backend_name = "MPI"

    def open_transport(self) -> JobTransport:
        """Return this rank's transport to the others; a runner over another transport overrides this.

        Raises
        ------
        ConfigError
            If fewer than 2 processes were launched.

        """
        args = self.args
        transport = MPITransport(timeout=args.timeout, max_bytes=args.max_message_mb << 20)
        if transport.world_size < 2:
            raise ConfigError(
                "comm_args.backend MPI needs at least 2 processes (rank 0 is the server, the others train); "
                "launch with: mpirun -np 4 python your_script.py --cf your_config.yaml"
            )
        return transport

    def remote_backend(self, transport: JobTransport, log: logging.LoggerAdapter) -> RemoteBackend:
        """Return rank 0's backend: every other rank is a peer, and a round waits for all of them."""
        args = self.args
        return RemoteBackend(
            transport,
            AllReplies(args.timeout),
            self.backend_name,
            expected_peers=[str(r) for r in range(1, transport.world_size)],
            join_timeout=args.timeout,
            client_num=self.dataset.client_num,
            log=log,
        )

    def run(self) -> RunResult:
        """Run the simulation on this rank and return the run's result."""
        other = run_topology(self)
        if other is not None:
            return other
        args = self.args
        transport = self.open_transport()
        role, rank = ("Server", 0) if transport.rank == 0 else ("Client", transport.rank)
        try:
            if transport.rank == 0:
                rounds = self.rounds()
                backend = self.remote_backend(transport, rounds.log)
                return rounds.run(secure_remote(backend, args, self.steps, self.algorithm))
            wait = server_wait(args.timeout)
            worker = RoundWorker(transport, self.local_backend(), self.sample_counts(), wait)
            return secure_worker(worker, args, self.steps).run()
        except TransportError as exc:
            role_logger(role, rank).error("Aborting the %s job: %s", self.backend_name, exc)
            transport.abort(1)
            raise
