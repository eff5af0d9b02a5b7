"""Writers of small files in each dataset's real on-disk format, for the loader tests (no download)."""

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from fedml.data.leaf import ALL_LETTERS


def data_args(**overrides):
    """The arguments ``fedml.data.load`` reads, as a plain namespace (every key counts as set)."""
    base = {
        "dataset": "mnist",
        "data_cache_dir": "/nonexistent",
        "download": False,
        "partition_method": "homo",
        "partition_alpha": 0.5,
        "shards_per_client": 2,
        "client_num_in_total": 2,
        "batch_size": 4,
        "random_seed": 0,
    }
    return SimpleNamespace(**{**base, **overrides})


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> Path:
    """Write cifar-10-batches-py/ as the python-version tarball extracts: pickled dicts of numpy arrays."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] * 10}, protocol=2))
    return folder


def write_cifar100(root: Path, n: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        batch = {
            b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
            b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def write_leaf(root: Path, users: dict[str, tuple[list, list]], split: str, files: int = 1) -> None:
    """Write ``root/<split>/all_data_<i>.json`` files splitting ``users`` (user -> (x, y)) among them."""
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(users)
    for i in range(files):
        mine = names[i::files]
        data = {
            "users": mine,
            "num_samples": [len(users[u][1]) for u in mine],
            "user_data": {u: {"x": users[u][0], "y": users[u][1]} for u in mine},
        }
        (folder / f"all_data_{i}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(data))


def femnist_users(sizes: dict[str, int], seed: int = 0) -> dict[str, tuple[list, list]]:
    rng = np.random.default_rng(seed)
    return {
        u: (rng.random((n, 784)).round(3).tolist(), rng.integers(0, 62, n).tolist()) for u, n in sizes.items()
    }


def shakespeare_users(texts: dict[str, str]) -> dict[str, tuple[list, list]]:
    """LEAF's samples of each speaker's text: every 80-character window and the character after it."""
    return {
        u: ([t[i : i + 80] for i in range(len(t) - 80)], [t[i + 80] for i in range(len(t) - 80)])
        for u, t in texts.items()
    }


def random_text(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(ALL_LETTERS), n))


def write_tff(path: Path, clients: dict[str, dict[str, np.ndarray]]) -> Path:
    """Write a TFF-style ``.h5``: a group ``examples/<client_id>/`` holding each feature as a dataset."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        examples = file.create_group("examples")
        for client, features in clients.items():
            group = examples.create_group(client)
            for name, values in features.items():
                group.create_dataset(name, data=values)
    return path
