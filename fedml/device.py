"""Device selection from ``device_args``."""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def get_device(args: Any) -> torch.device:
    """Return ``cuda:<gpu_id>`` when ``using_gpu`` is set and CUDA is available, else the CPU.

    Asking for a GPU on a machine without one logs a warning and falls back to the CPU, so a config
    written for a GPU server still runs on a laptop.
    """
    if not args.using_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        log.warning("[FedML] device_args.using_gpu is true but CUDA is not available; using the CPU")
        return torch.device("cpu")
    if args.gpu_id >= torch.cuda.device_count():
        log.warning(
            "[FedML] device_args.gpu_id %d does not exist (%d GPUs); using cuda:0",
            args.gpu_id,
            torch.cuda.device_count(),
        )
        return torch.device("cuda:0")
    return torch.device(f"cuda:{args.gpu_id}")
