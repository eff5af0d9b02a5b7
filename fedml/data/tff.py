"""TFF's federated EMNIST, CIFAR-100 and Shakespeare: the ``.h5`` files of TensorFlow Federated, by client."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedml.config.sections import read_settings
from fedml.data.cifar import CIFAR100, CifarSettings, RandomCropFlip
from fedml.data.dataset import RawData
from fedml.data.leaf import SEQ_LENGTH, UNKNOWN_CHAR, encode_text
from fedml.errors import DataError

logger = logging.getLogger(__name__)

EXTRA_HINT = 'pip install -e ".[data]"  (or pip install "fedml[data]")'


@dataclass(frozen=True)
class TffLayout:
    """One TFF dataset: its two files and the features each client's group holds."""

    name: str
    train_file: str
    test_file: str
    features: tuple[str, ...]

    def layout(self) -> str:
        """Describe the expected files, for error messages."""
        features = ", ".join(self.features)
        return (
            f"TFF's layout: {self.train_file} and {self.test_file}, each with a group examples/<client_id>/ "
            f"holding the datasets {features}"
        )


FED_EMNIST = TffLayout("fed_emnist", "fed_emnist_train.h5", "fed_emnist_test.h5", ("pixels", "label"))
FED_CIFAR100 = TffLayout("fed_cifar100", "fed_cifar100_train.h5", "fed_cifar100_test.h5", ("image", "label"))
FED_SHAKESPEARE = TffLayout("fed_shakespeare", "shakespeare_train.h5", "shakespeare_test.h5", ("snippets",))

Convert = Callable[[Path, str, dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]
"""Turns one client's feature arrays into input and label arrays."""


def load_fed_emnist(args: Any) -> RawData:
    """Load TFF's federated EMNIST (62 classes, one client per writer) from ``data_cache_dir``."""
    return load_tff(FED_EMNIST, args.data_cache_dir, _emnist)


def load_fed_cifar100(args: Any) -> RawData:
    """Load TFF's federated CIFAR-100 (fine labels, 500 training clients) from ``data_cache_dir``."""
    mean = torch.tensor(CIFAR100.mean).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100.std).view(1, 3, 1, 1)
    raw = load_tff(FED_CIFAR100, args.data_cache_dir, _cifar)
    fill = tuple(float(v) for v in (-mean / std).flatten())
    return RawData(
        train_x=raw.train_x.div_(255.0).sub_(mean).div_(std),
        train_y=raw.train_y,
        test_x=raw.test_x.div_(255.0).sub_(mean).div_(std),
        test_y=raw.test_y,
        source=raw.source,
        train_groups=raw.train_groups,
        test_groups=raw.test_groups,
        train_transform=RandomCropFlip(fill) if read_settings(args, CifarSettings).augment else None,
    )


def load_fed_shakespeare(args: Any) -> RawData:
    """Load TFF's Shakespeare as next-character samples over LEAF's alphabet, one client per role."""
    return load_tff(FED_SHAKESPEARE, args.data_cache_dir, _shakespeare)


def load_tff(layout: TffLayout, data_cache_dir: str | Path, convert: Convert) -> RawData:
    """Read ``layout``'s train and test files from ``<data_cache_dir>`` or ``<data_cache_dir>/<name>``.

    Returns
    -------
    RawData
        The samples with ``train_groups`` / ``test_groups``: each sample's client, numbered in the sorted
        order of the training clients (clients only in the test file are numbered after them).

    Raises
    ------
    DataError
        If a file is missing or not in TFF's layout; the message names the file and the layout.
    ImportError
        If h5py is not installed, naming the extra that installs it.

    """
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            f"dataset {layout.name!r} needs h5py, which is not installed; {EXTRA_HINT}"
        ) from exc
    base = Path(data_cache_dir).expanduser()
    candidates = [base, base / layout.name]
    root = next((c for c in candidates if (c / layout.train_file).is_file()), None)
    if root is None or not (root / layout.test_file).is_file():
        raise DataError(
            f"{layout.name}: {layout.train_file} or {layout.test_file} missing in "
            f"{' or '.join(str(c) for c in candidates)}; expected {layout.layout()}"
        )
    splits = []
    for name in (layout.train_file, layout.test_file):
        path = root / name
        try:
            with h5py.File(path, "r") as file:
                splits.append(_read_clients(h5py, file, path, layout, convert))
        except OSError as exc:
            raise DataError(f"{path}: not an HDF5 file ({exc}); expected {layout.layout()}") from exc
    (train_x, train_y, train_owner), (test_x, test_y, test_owner) = splits
    clients = sorted(set(train_owner))
    ids = {client: i for i, client in enumerate(clients)}
    for client in sorted(set(test_owner) - set(ids)):
        ids[client] = len(ids)
    logger.info("%s source: TFF HDF5 in %s, %d training clients", layout.name, root, len(clients))
    return RawData(
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        source=f"TFF HDF5 in {root}",
        train_groups=np.array([ids[c] for c in train_owner], dtype=np.int64),
        test_groups=np.array([ids[c] for c in test_owner], dtype=np.int64),
    )


def _read_clients(
    h5py: Any, file: Any, path: Path, layout: TffLayout, convert: Convert
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    examples = file.get("examples")
    if not isinstance(examples, h5py.Group) or not len(examples):
        raise DataError(f"{path}: no group 'examples' of clients; expected {layout.layout()}")
    xs, ys, owners = [], [], []
    for client in sorted(examples):
        group = examples[client]
        missing = [f for f in layout.features if not isinstance(group.get(f), h5py.Dataset)]
        if missing:
            raise DataError(
                f"{path}: examples/{client} lacks {', '.join(missing)}; expected {layout.layout()}"
            )
        x, y = convert(path, client, {f: group[f][()] for f in layout.features})
        xs.append(x)
        ys.append(y)
        owners.extend([client] * len(y))
    return np.concatenate(xs), np.concatenate(ys), owners


def _emnist(path: Path, client: str, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pixels, labels = features["pixels"], features["label"].astype(np.int64).reshape(-1)
    if pixels.ndim != 3 or pixels.shape[1:] != (28, 28) or len(pixels) != len(labels):
        raise DataError(f"{path}: examples/{client}: pixels must be (N, 28, 28) with one label each")
    if labels.size and (labels.min() < 0 or labels.max() >= 62):
        raise DataError(f"{path}: examples/{client}: labels must lie in 0..61")
    return pixels.astype(np.float32)[:, None], labels


def _cifar(path: Path, client: str, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = features["image"], features["label"].astype(np.int64).reshape(-1)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or len(images) != len(labels):
        raise DataError(f"{path}: examples/{client}: image must be (N, 32, 32, 3) with one label each")
    if labels.size and (labels.min() < 0 or labels.max() >= 100):
        raise DataError(f"{path}: examples/{client}: labels must lie in 0..99")
    return images.astype(np.float32).transpose(0, 3, 1, 2).copy(), labels


def _shakespeare(path: Path, client: str, features: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every character of every snippet is a sample: the 80 characters before it (space-padded) -> it."""
    xs, ys = [], []
    for snippet in np.asarray(features["snippets"]).reshape(-1):
        text = snippet.decode("utf-8", errors="replace") if isinstance(snippet, bytes) else str(snippet)
        if not text:
            continue
        ids = encode_text(UNKNOWN_CHAR * SEQ_LENGTH + text)
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], SEQ_LENGTH)
        xs.append(windows.copy())
        ys.append(ids[SEQ_LENGTH:])
    if not xs:
        return np.empty((0, SEQ_LENGTH), dtype=np.int64), np.empty(0, dtype=np.int64)
    return np.concatenate(xs), np.concatenate(ys)
