"""TRPC simulation: the MPI simulation's round (rank 0 server, ranks 1..N-1 train) over PyTorch RPC.

Only the transport differs from ``MPISimulator``: ``open_transport`` joins a ``torchrun`` job's RPC
group instead of ``MPI.COMM_WORLD``, and ``run`` leaves that group at the end, since an RPC group is
left together.
"""

from __future__ import annotations

import os

from fedml.core.comm.trpc import TORCHRUN_HINT, TRPCTransport, read_launch
from fedml.errors import ConfigError
from fedml.simulation.mpi import MPISimulator
from fedml.tracking import RunResult


class TRPCSimulator(MPISimulator):
    """Runs the simulation across the ranks of a ``torchrun`` job (``--nproc-per-node N``, N >= 2).

    Everything else is ``MPISimulator``'s: the same round, results and run directory, and a transport
    failure ends the job (``TRPCTransport.abort``; ``torchrun`` then stops the other ranks).

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``Simulator``.

    """

    backend_name = "TRPC"
    _transport: TRPCTransport | None = None

    def open_transport(self) -> TRPCTransport:
        """Join the job's RPC group and return this rank's transport to the others.

        Raises
        ------
        ConfigError
            If not launched by ``torchrun``, with fewer than 2 processes, or with a ``MASTER_ADDR``
            that ``fedml.core.comm.trpc.read_launch`` refuses.
        TransportError
            If the RPC group cannot be joined.

        """
        args = self.args
        launch = read_launch(os.environ, args.insecure_remote)
        if launch.world_size < 2:
            raise ConfigError(
                "comm_args.backend TRPC needs at least 2 processes (rank 0 is the server, the others "
                f"train); launch with: {TORCHRUN_HINT}"
            )
        self._transport = TRPCTransport(
            timeout=args.timeout,
            max_bytes=args.max_message_mb << 20,
            insecure_remote=args.insecure_remote,
            launch=launch,
        )
        return self._transport

    def run(self) -> RunResult:
        """Run the simulation on this rank, then leave the RPC group with the other ranks."""
        graceful = False
        try:
            result = super().run()
            graceful = True
            return result
        finally:
            if self._transport is not None:
                self._transport.close(graceful=graceful)
                self._transport = None
