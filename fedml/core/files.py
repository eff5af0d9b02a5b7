"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A crash or a full disk mid-write leaves the previous file as it was and no temporary file behind; the
error that stopped the write is the one raised. Also ``new_folder``: a folder no other process has.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file that then replaces ``path``.

    Raises
    ------
    OSError
        What the write, flush or rename raised (a full disk, a permission); ``path`` is unchanged.

    """
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    atomic_write(path, lambda file: torch.save(obj, file))


def new_folder(parent: Path, name: str) -> Path:
    """Create and return ``parent/name``, or ``name-2``, ``name-3``, ... when taken (by any process).

    ``mkdir`` either creates the folder or fails, so two runs started in the same second never share one.
    """
    parent.mkdir(parents=True, exist_ok=True)
    candidate, n = parent / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = parent / f"{name}-{n}"
