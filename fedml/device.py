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


_threads_logged: set[int] = set()


def set_threads(args: Any, device: torch.device) -> int:
    """Set the intra-op thread count of this process from ``device_args.num_threads``; return it.

    ``null`` picks 1 thread on the CPU: the engines' steps are many small operations, and on the
    machines measured one thread was both faster and far steadier than two (docs/performance.md,
    "Threads"). On a GPU the CPU only launches kernels, so PyTorch's default is kept. The choice is
    logged once per process and count.
    """
    threads = args.num_threads
    reason = "device_args.num_threads"
    if threads is None:
        if device.type == "cuda":
            return torch.get_num_threads()
        threads, reason = 1, "default on the CPU"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if threads not in _threads_logged:
        _threads_logged.add(threads)
        log.info("[FedML] %d intra-op CPU thread%s (%s)", threads, "" if threads == 1 else "s", reason)
    return threads
