"""``MPIBackend``: the seed's entry point to MPI, a thin handle on ``MPI.COMM_WORLD`` and its transport.

Examples
--------
Under ``mpirun -np 2 python script.py``::

    from fedml.core import mpi_backend

    backend = mpi_backend.MPIBackend()
    backend.initialize()
    print("MPI Backend Initialized Successfully!")

"""

from __future__ import annotations

import logging
from typing import Any

from fedml.core.comm.mpi import MPITransport, mpi_module

log = logging.getLogger(__name__)


class MPIBackend:
    """MPI for this process: ``initialize`` starts it (if needed) and records rank and size.

    Attributes
    ----------
    comm
        ``MPI.COMM_WORLD`` once initialized.
    rank, size
        This process's rank and the number of ranks.

    """

    def __init__(self) -> None:
        self.comm: Any = None
        self.rank = 0
        self.size = 1

    def initialize(self) -> MPIBackend:
        """Initialize MPI and return ``self``.

        Raises
        ------
        ImportError
            If mpi4py is missing; the message names ``pip install -e ".[mpi]"``.

        """
        mpi = mpi_module()
        if not mpi.Is_initialized():
            mpi.Init()
        self.comm = mpi.COMM_WORLD
        self.rank, self.size = int(self.comm.Get_rank()), int(self.comm.Get_size())
        log.debug("MPI initialized: rank %d of %d", self.rank, self.size)
        return self

    def transport(self, timeout: float = 300.0) -> MPITransport:
        """Return a transport over this backend's communicator (initializing MPI first if needed)."""
        if self.comm is None:
            self.initialize()
        return MPITransport(self.comm, timeout=timeout)
