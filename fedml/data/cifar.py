"""CIFAR-10 and CIFAR-100: the python-version pickles in the cache, else a torchvision download."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings, read_settings
from fedml.data.dataset import RawData
from fedml.data.mnist import _network_reachable
from fedml.errors import DataError

logger = logging.getLogger(__name__)

INPUT_SHAPE = (3, 32, 32)
DOWNLOAD_HOST = "www.cs.toronto.edu"
"""Where torchvision downloads CIFAR from; probed before torchvision is imported at all."""


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant's files live under ``data_cache_dir`` and how to read them."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str
    archive: str


CIFAR10 = CifarLayout(
    "cifar10",
    "cifar-10-batches-py",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "labels",
    10,
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
    "CIFAR10",
    "cifar-10-python.tar.gz",
)
CIFAR100 = CifarLayout(
    "cifar100",
    "cifar-100-python",
    ("train",),
    ("test",),
    "fine_labels",
    100,
    (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762),
    "CIFAR100",
    "cifar-100-python.tar.gz",
)


class CifarSettings(ComponentSettings):
    """The CIFAR datasets' key in ``data_args``: whether training batches are augmented."""

    section = "data_args"
    augment: bool = Field(True)


@dataclass(frozen=True)
class RandomCropFlip:
    """The standard CIFAR augmentation on a normalised batch: pad 4, random 32x32 crop, random flip.

    ``fill`` is the normalised value of a black pixel per channel, so padding looks as it does when
    torchvision pads the raw image before normalising. Every draw comes from the generator passed in.

    Examples
    --------
    >>> aug = RandomCropFlip(fill=(0.0, 0.0, 0.0))
    >>> aug(torch.ones(2, 3, 32, 32), torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3, 32, 32])

    """

    fill: tuple[float, ...]
    padding: int = 4

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Return the augmented copy of the ``(N, C, H, W)`` batch ``x``."""
        n, c, h, w = x.shape
        p = self.padding
        fill = torch.tensor(self.fill, dtype=x.dtype).view(1, c, 1, 1)
        padded = fill.expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        rows = dy[:, None] + torch.arange(h)
        cols = dx[:, None] + torch.arange(w)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        # One gather for the whole batch: advanced indices around the channel slice give (N, H, W, C).
        out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


def load_cifar10(args: Any) -> RawData:
    """Load CIFAR-10 for the run's ``data_cache_dir``, ``download`` and ``augment``."""
    return load_cifar(
        CIFAR10, args.data_cache_dir, bool(args.download), read_settings(args, CifarSettings).augment
    )


def load_cifar100(args: Any) -> RawData:
    """Load CIFAR-100 (fine labels) for the run's ``data_cache_dir``, ``download`` and ``augment``."""
    return load_cifar(
        CIFAR100, args.data_cache_dir, bool(args.download), read_settings(args, CifarSettings).augment
    )


def load_cifar(layout: CifarLayout, data_cache_dir: str | Path, download: bool, augment: bool) -> RawData:
    """Load a CIFAR variant from ``<data_cache_dir>/<layout.folder>``, downloading it first if allowed.

    Parameters
    ----------
    layout : CifarLayout
        ``CIFAR10`` or ``CIFAR100``.
    data_cache_dir : str or Path
        Cache root (``~`` is expanded).
    download : bool
        When files are missing, try a torchvision download if the host answers within 1.5 s.
    augment : bool
        Attach :class:`RandomCropFlip` as the training transform.

    Returns
    -------
    RawData
        float32 images ``(N, 3, 32, 32)`` normalised per channel, int64 labels.

    Raises
    ------
    DataError
        If files are missing (naming each one and the folder they belong in) or malformed.

    """
    folder = Path(data_cache_dir).expanduser() / layout.folder
    source = f"python pickles in {folder}"
    if _missing(layout, folder) and download and _download(layout, folder.parent):
        source = f"torchvision download, pickles in {folder}"
    missing = _missing(layout, folder)
    if missing:
        raise DataError(
            f"{layout.name}: missing {', '.join(missing)} in {folder}; extract {layout.archive} (the python "
            f"version) into {folder.parent} so that {folder.name}/ holds "
            f"{', '.join(layout.train_files + layout.test_files)}, or allow a download (data_args.download)"
        )
    train_x, train_y = _read_split(layout, folder, layout.train_files)
    test_x, test_y = _read_split(layout, folder, layout.test_files)
    mean = torch.tensor(layout.mean).view(1, 3, 1, 1)
    std = torch.tensor(layout.std).view(1, 3, 1, 1)
    fill = tuple(float(v) for v in (-mean / std).flatten())
    logger.info("%s source: %s", layout.name, source)
    return RawData(
        train_x=_normalise(train_x, mean, std),
        train_y=torch.from_numpy(train_y),
        test_x=_normalise(test_x, mean, std),
        test_y=torch.from_numpy(test_y),
        source=source,
        train_transform=RandomCropFlip(fill) if augment else None,
    )


def _missing(layout: CifarLayout, folder: Path) -> list[str]:
    return [name for name in layout.train_files + layout.test_files if not (folder / name).is_file()]


def _read_split(layout: CifarLayout, folder: Path, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        path = folder / name
        batch = _read_batch(path)
        data, y = batch.get("data"), batch.get(layout.label_key)
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or y is None:
            raise DataError(
                f"{path}: expected a pickled dict with 'data' (N x 3072 uint8) and '{layout.label_key}' "
                f"(N labels), as in {layout.archive}"
            )
        y = np.asarray(y, dtype=np.int64)
        if y.shape != (data.shape[0],) or (y.size and (y.min() < 0 or y.max() >= layout.classes)):
            raise DataError(
                f"{path}: '{layout.label_key}' must hold one label in 0..{layout.classes - 1} per row"
            )
        images.append(data.astype(np.uint8).reshape(-1, 3, 32, 32))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's files hold (dicts, lists, numpy arrays), never arbitrary objects."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
            ("copy_reg", "_reconstructor"),
            ("copyreg", "_reconstructor"),
            ("__builtin__", "object"),
            ("builtins", "object"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            # latin1, as torchvision reads these Python 2 pickles: numpy's byte buffers stay intact.
            batch = _ArrayUnpickler(fh, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a CIFAR python pickle ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    return {
        key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in batch.items()
    }


def _normalise(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32)).div_(255.0).sub_(mean).div_(std)


def _download(layout: CifarLayout, root: Path) -> bool:
    """Download ``layout`` with torchvision into ``root`` if its host answers; return whether it worked."""
    if not _network_reachable(DOWNLOAD_HOST):
        logger.info("%s download skipped: %s is not reachable", layout.name, DOWNLOAD_HOST)
        return False
    import torchvision.datasets

    logger.info("downloading %s with torchvision into %s", layout.name, root)
    try:
        getattr(torchvision.datasets, layout.torchvision_class)(root=str(root), train=True, download=True)
    except (RuntimeError, OSError, ValueError) as exc:
        logger.warning("%s download into %s failed (%s)", layout.name, root, exc)
        return False
    return True
