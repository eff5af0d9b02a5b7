"""Where this process sits in a multi-process launch: rank, world size and rendezvous address.

Read from the environment that ``torchrun``, MPICH's or Open MPI's ``mpirun``, or Slurm's ``srun`` sets,
so the same script runs under any of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_MASTER_ADDR = "127.0.0.1"
DEFAULT_MASTER_PORT = 29500

_LAUNCHERS: list[tuple[str, str, str, str]] = [
    ("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("MPICH", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
    ("Slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
]
"""(launcher, rank variable, world-size variable, local-rank variable), checked in this order."""


@dataclass(frozen=True)
class LaunchInfo:
    """Where one process sits in the job.

    Attributes
    ----------
    launcher
        Which launcher's variables were found (``"none"`` for a plain ``python`` run).
    rank, world_size, local_rank
        Global rank, number of processes, rank on this host.
    master_addr, master_port
        Where rank 0 listens for the torch.distributed rendezvous.

    """

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def detect_launch(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Return the launch information found in ``env`` (default ``os.environ``).

    ``MASTER_ADDR`` defaults to 127.0.0.1 (one host) and ``MASTER_PORT`` to 29500; set both when the
    ranks run on several hosts.

    Examples
    --------
    >>> detect_launch({"PMI_RANK": "1", "PMI_SIZE": "4"}).rank
    1

    """
    env = os.environ if env is None else env
    launcher, rank, world, local = "none", 0, 1, 0
    for name, rank_var, size_var, local_var in _LAUNCHERS:
        if rank_var in env and size_var in env:
            launcher, rank, world = name, int(env[rank_var]), int(env[size_var])
            local = int(env.get(local_var, rank))
            break
    return LaunchInfo(
        launcher=launcher,
        rank=rank,
        world_size=world,
        local_rank=local,
        master_addr=env.get("MASTER_ADDR", DEFAULT_MASTER_ADDR),
        master_port=int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT)),
    )
