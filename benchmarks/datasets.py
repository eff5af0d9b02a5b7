"""Datasets x models: parameters, seconds per round (sequential vs vectorized), accuracy after a short budget.

Real benchmark files are not on an offline machine, so every dataset except ``mnist`` (the embedded
5,000 real digits) and ``synthetic`` (FedProx's generator) is read from small files *generated in its
real on-disk format* (the writers of ``tests/data/formats.py``): CIFAR's pickles, LEAF's JSON, TFF's
HDF5. The generated samples are learnable (each class has its own image pattern; text is drawn from a
small vocabulary of words), so the accuracy column says whether a pair learns within the short budget,
not what it reaches on the real data; most of the generated pairs are still at chance after it.
Augmentation is off (``augment: false``) so both engines train the same batches.

For each pair, one process loads the data once, then runs the sequential and the vectorized engine
alternately (interleaved), ``--repeat`` times each; seconds per round is the median over those runs of
each run's median round (the warm-up first round and the evaluated last round left out when there are
others), and the ratio is the median of the per-repeat ratios. Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/datasets.py          # the table (about 26 minutes on 2 loaded cores)
    OMP_NUM_THREADS=1 python benchmarks/datasets.py --quick  # a smoke run of every pair
"""

from __future__ import annotations

import argparse
import logging
import math
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.data.formats import write_leaf, write_tff  # noqa: E402

PAIRS = [
    ("mnist", "lr"),
    ("mnist", "cnn"),
    ("synthetic", "lr"),
    ("cifar10", "cnn"),
    ("cifar10", "resnet20"),
    ("cifar10", "resnet18"),
    ("cifar10", "mobilenet_v2"),
    ("cifar100", "resnet20"),
    ("fed_cifar100", "resnet18"),
    ("femnist", "cnn"),
    ("fed_emnist", "cnn"),
    ("shakespeare", "rnn"),
    ("shakespeare", "transformer_tiny"),
    ("fed_shakespeare", "rnn"),
    ("fed_shakespeare", "transformer_tiny"),
]
"""The (dataset, model) pairs of the table, in its order."""

SOURCE = {
    "mnist": "embedded subset (real digits)",
    "synthetic": "FedProx's generator",
}
"""Where a dataset's samples come from; every other dataset is generated files in its real format."""

FULL = {"clients": 10, "train": 20, "test": 10, "rounds": 3, "repeat": 3}
QUICK = {"clients": 4, "train": 8, "test": 4, "rounds": 2, "repeat": 1}
"""Per-client training and test samples of the generated files, clients per round, rounds and repeats."""


def _images(rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, ...], classes: int) -> np.ndarray:
    """Return images in ``[0, 1]``: a fixed random pattern per class plus noise, so labels are learnable."""
    patterns = np.random.default_rng(1234).random((classes, *shape))
    return np.clip(0.7 * patterns[labels] + 0.3 * rng.random((len(labels), *shape)), 0.0, 1.0)


def _text(rng: np.random.Generator, length: int) -> str:
    """Return ``length`` characters of words from a small fixed vocabulary, so the next one is learnable."""
    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = ["".join(np.random.default_rng(i).choice(letters, 2 + i % 5)) for i in range(12)]
    words: list[str] = []
    size = -1
    while size < length:
        words.append(vocab[int(rng.integers(len(vocab)))])
        size += len(words[-1]) + 1
    return " ".join(words)[:length]


def _write_cifar(root: Path, folder: str, names: dict[str, int], key: bytes, classes: int) -> None:
    rng = np.random.default_rng(0)
    (root / folder).mkdir(parents=True)
    for name, n in names.items():
        labels = rng.integers(0, classes, n)
        pixels = (_images(rng, labels, (3, 32, 32), classes) * 255).astype(np.uint8).reshape(n, 3072)
        batch = {key: [int(v) for v in labels], b"data": pixels}
        (root / folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def write_dataset(dataset: str, root: Path, clients: int, train: int, test: int) -> None:
    """Write ``dataset``'s files under ``root``: ``clients`` natural clients, or a pool for as many."""
    rng = np.random.default_rng(0)
    n_train, n_test = clients * train, clients * test
    if dataset == "cifar10":
        sizes = {f"data_batch_{i}": n_train // 5 for i in range(1, 6)}
        _write_cifar(root, "cifar-10-batches-py", {**sizes, "test_batch": n_test}, b"labels", 10)
    elif dataset == "cifar100":
        _write_cifar(root, "cifar-100-python", {"train": n_train, "test": n_test}, b"fine_labels", 100)
    elif dataset == "femnist":
        for split, n in (("train", train), ("test", test)):
            users = {}
            for u in range(clients):
                labels = rng.integers(0, 62, n)
                pixels = _images(rng, labels, (784,), 62).round(3)
                users[f"w{u:03d}"] = (pixels.tolist(), labels.tolist())
            write_leaf(root, users, split)
    elif dataset == "shakespeare":
        for split, n in (("train", train), ("test", test)):
            users = {}
            for u in range(clients):
                text = _text(rng, n + 80)
                users[f"s{u:03d}"] = ([text[i : i + 80] for i in range(n)], [text[i + 80] for i in range(n)])
            write_leaf(root, users, split)
    elif dataset == "fed_emnist":
        for split, n in (("train", train), ("test", test)):
            data = {}
            for u in range(clients):
                labels = rng.integers(0, 62, n)
                data[f"f{u:04d}"] = {
                    "pixels": _images(rng, labels, (28, 28), 62).astype(np.float32),
                    "label": labels.astype(np.int32),
                }
            write_tff(root / f"fed_emnist_{split}.h5", data)
    elif dataset == "fed_cifar100":
        for split, n in (("train", train), ("test", test)):
            data = {}
            for u in range(clients):
                labels = rng.integers(0, 100, n)
                images = _images(rng, labels, (32, 32, 3), 100)
                data[f"{split}{u}"] = {"image": (images * 255).astype(np.uint8), "label": labels}
            write_tff(root / f"fed_cifar100_{split}.h5", data)
    elif dataset == "fed_shakespeare":
        # Every character of a snippet is a sample, so a snippet of n characters gives n samples.
        for split, n in (("train", train), ("test", test)):
            data = {
                f"ROLE{u}": {"snippets": np.array([_text(rng, n).encode()], dtype=object)}
                for u in range(clients)
            }
            write_tff(root / f"shakespeare_{split}.h5", data)


def settings_for(dataset: str, model: str, size: dict, cache: Path, runs: Path) -> dict:
    """Return the overrides of one pair's runs."""
    clients = size["clients"]
    base = {
        "dataset": dataset,
        "model": model,
        "data_cache_dir": str(cache),
        "download": False,
        "run_dir": str(runs),
        "client_num_per_round": clients,
        "comm_round": size["rounds"],
        "frequency_of_the_test": size["rounds"],
        "batch_size": 10,
        "learning_rate": 0.05,
        "epochs": 1,
        "quiet": True,
        "plots": False,
        "save_model": False,
        "random_seed": 0,
    }
    if dataset == "mnist":
        # 400 digits per client would make the CNN's round ten times longer than the others'.
        base.update(client_num_in_total=4000 // size["train"], partition_method="homo")
    elif dataset == "synthetic":
        base.update(client_num_in_total=clients, synthetic_max_samples=size["train"] + size["test"])
    elif dataset in ("cifar10", "cifar100"):
        base.update(client_num_in_total=clients, partition_method="homo", augment=False)
    else:
        base.update(client_num_in_total=clients)
        if dataset == "fed_cifar100":
            base["augment"] = False
    return base


def run_once(settings: dict, engine: str, dataset: object) -> dict:
    """Run one simulation with ``engine`` on the loaded ``dataset``; return its timing and accuracy."""
    import torch

    import fedml
    from fedml.config import load_arguments

    args = load_arguments(None, {**settings, "engine": engine})
    model = fedml.model.create(args, dataset.output_dim, input_shape=dataset.input_shape)
    result = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()
    rounds = result.round_seconds
    timed = rounds[1:-1] or rounds
    return {
        "engine": result.engine,
        "seconds": statistics.median(timed),
        "accuracy": result.final_metrics["test_accuracy"],
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def measure(dataset: str, model: str, size: dict) -> dict:
    """Measure one pair: both engines interleaved, ``size['repeat']`` times."""
    import fedml
    from fedml.config import load_arguments

    with tempfile.TemporaryDirectory() as folder:
        cache, runs = Path(folder) / "cache", Path(folder) / "runs"
        cache.mkdir()
        write_dataset(dataset, cache, size["clients"], size["train"], size["test"])
        settings = settings_for(dataset, model, size, cache, runs)
        data, _ = fedml.data.load(load_arguments(None, settings))
        seq, vec = [], []
        for _ in range(size["repeat"]):
            seq.append(run_once(settings, "sequential", data))
            vec.append(run_once(settings, "vectorized", data))
    vectorizes = all(row["engine"] == "vectorized" for row in vec)
    return {
        "params": seq[0]["params"],
        "train": data.train_data_num,
        "test": data.test_data_num,
        "seq": statistics.median(r["seconds"] for r in seq),
        "vec": statistics.median(r["seconds"] for r in vec) if vectorizes else math.nan,
        "ratio": statistics.median(s["seconds"] / v["seconds"] for s, v in zip(seq, vec, strict=True))
        if vectorizes
        else math.nan,
        "acc_seq": seq[0]["accuracy"],
        "acc_vec": vec[0]["accuracy"] if vectorizes else math.nan,
    }


def main() -> None:
    """Print the table as Markdown, one row per pair as it is measured."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny files, 2 rounds, one repeat")
    parser.add_argument("--pairs", help="comma-separated dataset:model pairs to run (default: all)")
    opts = parser.parse_args()
    logging.getLogger("fedml").setLevel(logging.ERROR)
    size = QUICK if opts.quick else FULL
    pairs = PAIRS if not opts.pairs else [tuple(p.split(":")) for p in opts.pairs.split(",")]
    print(
        f"{size['clients']} clients a round, 1 local epoch, batch 10, SGD lr 0.05, {size['rounds']} rounds, "
        f"{size['repeat']} interleaved repeat(s); generated files: {size['train']} training and "
        f"{size['test']} test samples per client"
    )
    print()
    print(
        "| dataset | data | model | parameters | train / test samples | s/round sequential "
        "| s/round vectorized | sequential / vectorized | accuracy after the budget (seq / vec) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    for dataset, model in pairs:
        row = measure(dataset, model, size)
        vec = "n/a" if math.isnan(row["vec"]) else f"{row['vec']:.3f}"
        ratio = "does not vectorize" if math.isnan(row["ratio"]) else f"{row['ratio']:.2f}x"
        acc_vec = "n/a" if math.isnan(row["acc_vec"]) else f"{100 * row['acc_vec']:.1f}%"
        print(
            f"| `{dataset}` | {SOURCE.get(dataset, 'generated files')} | `{model}` | {row['params']:,} "
            f"| {row['train']:,} / {row['test']:,} | {row['seq']:.3f} | {vec} | {ratio} "
            f"| {100 * row['acc_seq']:.1f}% / {acc_vec} |",
            flush=True,
        )
    print()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
