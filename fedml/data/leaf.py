"""LEAF's FEMNIST and Shakespeare: the JSON files of LEAF's scripts, split by writer and by speaker."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedml.data.dataset import RawData
from fedml.errors import DataError

logger = logging.getLogger(__name__)

FEMNIST_INPUT_SHAPE = (1, 28, 28)
FEMNIST_OUTPUT_DIM = 62
"""Digits, upper- and lower-case letters."""

ALL_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
"""LEAF's Shakespeare alphabet (``models/utils/language_utils.py``); a character's id is its index."""

SEQ_LENGTH = 80
"""Characters of context per Shakespeare sample, as in LEAF."""

SHAKESPEARE_INPUT_SHAPE = (SEQ_LENGTH,)
SHAKESPEARE_OUTPUT_DIM = len(ALL_LETTERS)

UNKNOWN_CHAR = " "
"""What a character outside ``ALL_LETTERS`` becomes (LEAF's own code would give it id -1)."""

LAYOUT = (
    "LEAF's layout: train/ and test/ folders of *.json files, each "
    '{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}'
)

_CHAR_IDS = {c: i for i, c in enumerate(ALL_LETTERS)}


def encode_text(text: str) -> np.ndarray:
    """Return the LEAF character ids of ``text`` as int64 (unknown characters count as a space).

    Examples
    --------
    >>> encode_text("Hi!").tolist()
    [32, 61, 2]

    """
    unknown = _CHAR_IDS[UNKNOWN_CHAR]
    return np.fromiter((_CHAR_IDS.get(c, unknown) for c in text), dtype=np.int64, count=len(text))


def load_femnist(args: Any) -> RawData:
    """Load FEMNIST from LEAF's JSON files under ``data_cache_dir``, one natural client per writer."""
    return load_leaf(args.data_cache_dir, "femnist", _femnist_samples)


def load_shakespeare(args: Any) -> RawData:
    """Load Shakespeare from LEAF's JSON files under ``data_cache_dir``, one natural client per speaker."""
    return load_leaf(args.data_cache_dir, "shakespeare", _shakespeare_samples)


Samples = Callable[[Path, str, list[Any], list[Any]], tuple[np.ndarray, np.ndarray]]
"""Turns one user's ``x`` and ``y`` lists of a file into input and label arrays."""


def load_leaf(data_cache_dir: str | Path, name: str, samples: Samples) -> RawData:
    """Read a LEAF dataset's ``train/`` and ``test/`` JSON files.

    The folder is the first of ``<data_cache_dir>``, ``<data_cache_dir>/<name>`` and
    ``<data_cache_dir>/<name>/data`` that holds both ``train/`` and ``test/`` (``data/`` is where LEAF's
    scripts write them).

    Returns
    -------
    RawData
        The samples with ``train_groups`` / ``test_groups``: each sample's user, numbered in the sorted
        order of the training users (test-only users are numbered after them).

    Raises
    ------
    DataError
        If no folder holds the layout, or a file is not LEAF JSON; the message names the path.

    """
    base = Path(data_cache_dir).expanduser()
    candidates = [base, base / name, base / name / "data"]
    root = next((c for c in candidates if (c / "train").is_dir() and (c / "test").is_dir()), None)
    if root is None:
        raise DataError(
            f"{name}: no train/ and test/ folders in {' or '.join(str(c) for c in candidates)}; "
            f"expected {LAYOUT}"
        )
    train = _read_folder(root / "train", samples)
    test = _read_folder(root / "test", samples)
    users = sorted(train[2])
    ids = {user: i for i, user in enumerate(users)}
    for user in sorted(set(test[2]) - set(ids)):
        ids[user] = len(ids)
    logger.info("%s source: LEAF JSON in %s, %d users", name, root, len(users))
    return RawData(
        train_x=torch.from_numpy(train[0]),
        train_y=torch.from_numpy(train[1]),
        test_x=torch.from_numpy(test[0]),
        test_y=torch.from_numpy(test[1]),
        source=f"LEAF JSON in {root}",
        train_groups=np.array([ids[u] for u in train[3]], dtype=np.int64),
        test_groups=np.array([ids[u] for u in test[3]], dtype=np.int64),
    )


def _read_folder(folder: Path, samples: Samples) -> tuple[np.ndarray, np.ndarray, set[str], list[str]]:
    """Return inputs, labels, the users, and each sample's user, over the folder's JSON files."""
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no *.json files; expected {LAYOUT}")
    xs, ys, owners = [], [], []
    for path in files:
        for user, (x, y) in _read_file(path, samples).items():
            xs.append(x)
            ys.append(y)
            owners.extend([user] * len(y))
    if not owners:
        raise DataError(f"{folder}: the JSON files hold no samples; expected {LAYOUT}")
    return np.concatenate(xs), np.concatenate(ys), set(owners), owners


def _read_file(path: Path, samples: Samples) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc}); expected {LAYOUT}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("users"), list):
        raise DataError(f"{path}: no 'users' list; expected {LAYOUT}")
    user_data = data.get("user_data")
    if not isinstance(user_data, dict):
        raise DataError(f"{path}: no 'user_data' object; expected {LAYOUT}")
    result = {}
    for user in data["users"]:
        entry = user_data.get(user)
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("x"), list)
            or not isinstance(entry.get("y"), list)
        ):
            raise DataError(f"{path}: user_data[{user!r}] needs 'x' and 'y' lists; expected {LAYOUT}")
        if len(entry["x"]) != len(entry["y"]):
            raise DataError(f"{path}: user {user!r} has {len(entry['x'])} x but {len(entry['y'])} y")
        result[str(user)] = samples(path, str(user), entry["x"], entry["y"])
    return result


def _femnist_samples(path: Path, user: str, x: list[Any], y: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    try:
        images = np.asarray(x, dtype=np.float32).reshape(len(x), *FEMNIST_INPUT_SHAPE)
        labels = np.asarray(y, dtype=np.int64).reshape(len(y))
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: user {user!r}: x must be lists of 784 pixels and y integers ({exc})"
        ) from exc
    if labels.size and (labels.min() < 0 or labels.max() >= FEMNIST_OUTPUT_DIM):
        raise DataError(f"{path}: user {user!r} has labels outside 0..{FEMNIST_OUTPUT_DIM - 1}")
    return images, labels


def _shakespeare_samples(path: Path, user: str, x: list[Any], y: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    bad = next(
        (
            i
            for i, (s, t) in enumerate(zip(x, y, strict=True))
            if not isinstance(s, str) or len(s) != SEQ_LENGTH or not isinstance(t, str) or len(t) != 1
        ),
        None,
    )
    if bad is not None:
        raise DataError(
            f"{path}: user {user!r} sample {bad}: x must be a {SEQ_LENGTH}-character string and y one "
            "character"
        )
    inputs = encode_text("".join(x)).reshape(len(x), SEQ_LENGTH)
    return inputs, encode_text("".join(y))
