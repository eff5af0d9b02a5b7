"""Checkpoints: the global model, the algorithm's state and the number of rounds done, to resume a run."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedml.errors import ConfigError

CHECKPOINT_FILE = "checkpoint.pt"
"""Name of the checkpoint in a run directory."""


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

    """

    rounds_done: int
    model_state: dict[str, torch.Tensor]
    algorithm_state: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a crash mid-write leaves the previous file intact)."""
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "rounds_done": checkpoint.rounds_done,
            "model_state": checkpoint.model_state,
            "algorithm_state": checkpoint.algorithm_state,
        },
        partial,
    )
    partial.replace(path)


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
    return Checkpoint(int(data["rounds_done"]), dict(data["model_state"]), dict(data["algorithm_state"]))
