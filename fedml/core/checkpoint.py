"""Checkpoints: the global model, the algorithm's state and the number of rounds done, to resume a run."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedml.core.files import atomic_torch_save
from fedml.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.pt"
"""Name of the checkpoint in a run directory."""

IDENTITY_KEYS = (
    "random_seed",
    "dataset",
    "partition_method",
    "partition_alpha",
    "client_num_in_total",
    "client_num_per_round",
    "model",
    "federated_optimizer",
)
"""The settings a run's trajectory depends on; resuming with any of them changed is refused."""


def run_identity(args: Any) -> dict[str, Any]:
    """Return the values of ``IDENTITY_KEYS`` in ``args``, as stored in a checkpoint."""
    return {key: getattr(args, key) for key in IDENTITY_KEYS}


def check_resumable(checkpoint: Checkpoint, args: Any) -> None:
    """Refuse to resume ``checkpoint`` under ``args`` when the run would not be the same run.

    Raises
    ------
    ConfigError
        Naming each setting that differs from the checkpoint's, or a ``comm_round`` that leaves
        nothing to run (resuming may raise ``comm_round``, which is its point).

    """
    where = f"tracking_args.resume_from: {args.resume_from}"
    ours = run_identity(args)
    differing = [
        f"{key} is {ours[key]!r} here, {value!r} in the checkpoint"
        for key, value in checkpoint.identity.items()
        if key in ours and ours[key] != value
    ]
    if differing:
        raise ConfigError(f"{where}: a different run ({'; '.join(differing)})")
    if args.comm_round <= checkpoint.rounds_done:
        raise ConfigError(
            f"{where}: the checkpoint has {checkpoint.rounds_done} rounds done and train_args.comm_round is "
            f"{args.comm_round}, so nothing is left to run; raise comm_round to continue"
        )


@dataclass
class Checkpoint:
    """A resumable point of a run.

    Attributes
    ----------
    rounds_done
        How many rounds had finished; a resumed run starts with this round index.
    model_state
        The global model state after them.
    algorithm_state
        The algorithm's ``state_dict()`` (FedOpt's moments, SCAFFOLD's and FedDyn's per-client state);
        empty for stateless algorithms.
    identity
        ``run_identity`` of the run that wrote it (empty in checkpoints of older versions).
    steps_state
        Step name -> its ``state_dict()``, for steps with state (the DP accountant's ledger, an adaptive
        clipping bound).

    """

    rounds_done: int
    model_state: dict[str, torch.Tensor]
    algorithm_state: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    steps_state: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a crash mid-write leaves the previous file intact)."""
    atomic_torch_save(
        path,
        {
            "rounds_done": checkpoint.rounds_done,
            "model_state": checkpoint.model_state,
            "algorithm_state": checkpoint.algorithm_state,
            "identity": checkpoint.identity,
            "steps_state": checkpoint.steps_state,
        },
    )


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (tensors and plain containers only, no pickled code).

    Raises
    ------
    ConfigError
        Naming ``tracking_args.resume_from`` and the file, if it is missing or not a fedml checkpoint.

    """
    where = f"tracking_args.resume_from: {path}"
    try:
        data = torch.load(Path(path).expanduser(), weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"{where}: no such checkpoint") from exc
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as exc:
        raise ConfigError(f"{where}: not a readable checkpoint ({exc})") from exc
    if not isinstance(data, dict) or not {"rounds_done", "model_state", "algorithm_state"} <= set(data):
        raise ConfigError(
            f"{where}: not a fedml checkpoint (expected rounds_done, model_state, algorithm_state)"
        )
    return Checkpoint(
        int(data["rounds_done"]),
        dict(data["model_state"]),
        dict(data["algorithm_state"]),
        dict(data.get("identity", {})),
        dict(data.get("steps_state", {})),
    )
