"""What a partition looks like: per-client sample counts and label histograms, as a table and a plot."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedml.core.files import atomic_write_text, new_folder

TABLE_ROWS = 20
"""Clients listed one per row; with more, the table shows the largest and smallest half each."""

PLOT_CLIENTS = 100
"""Clients drawn in the label heatmap; with more, the largest ones."""

HISTOGRAM_LABELS = 6
"""Labels shown per client in the table's histogram column (the most frequent first)."""


@dataclass(frozen=True)
class DataStats:
    """Per-client counts of a federated dataset.

    Attributes
    ----------
    name, source : str
        The dataset and where it came from.
    train, test : np.ndarray
        Per client, the number of training and test samples.
    labels : np.ndarray
        ``(clients, classes)`` counts of each training label.
    test_global : int
        Samples of the global test set.

    """

    name: str
    source: str
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray
    test_global: int

    def to_dict(self) -> dict[str, Any]:
        """Return the counts as JSON-ready lists (what ``data_stats.json`` holds)."""
        return {
            "dataset": self.name,
            "source": self.source,
            "clients": len(self.train),
            "classes": int(self.labels.shape[1]),
            "test_global": self.test_global,
            "train_samples": self.train.tolist(),
            "test_samples": self.test.tolist(),
            "train_label_counts": self.labels.tolist(),
        }


def data_stats(dataset: Any) -> DataStats:
    """Count every client's training and test samples and training labels.

    Parameters
    ----------
    dataset : FederatedDataset or SyntheticDataset
        Anything with ``client_num``, ``output_dim``, ``local_train(i)``, ``local_test(i)`` and
        ``test_global`` (a dataset generated per client is generated here, client by client).

    Examples
    --------
    >>> import torch
    >>> from fedml.data import FederatedDataset
    >>> x, y = torch.zeros(4, 1), torch.tensor([0, 1, 1, 1])
    >>> stats = data_stats(FederatedDataset.from_tensors(x, y, x, y, [[0, 1], [2, 3]]))
    >>> stats.train.tolist(), stats.labels.tolist()
    ([2, 2], [[1, 1], [0, 2]])

    """
    classes = int(dataset.output_dim)
    train, test = [], []
    labels = np.zeros((dataset.client_num, classes), dtype=np.int64)
    for client in range(dataset.client_num):
        local = dataset.local_train(client)
        y = local.y[local.indices].numpy()
        labels[client] = np.bincount(y, minlength=classes)[:classes]
        train.append(len(local))
        test.append(len(dataset.local_test(client)))
    return DataStats(
        name=str(dataset.name),
        source=str(dataset.source),
        train=np.array(train, dtype=np.int64),
        test=np.array(test, dtype=np.int64),
        labels=labels,
        test_global=len(dataset.test_global),
    )


def stats_table(stats: DataStats, rows: int = TABLE_ROWS) -> str:
    """Return the counts as text: a summary, then a row per client (largest and smallest when many).

    Examples
    --------
    >>> stats = DataStats("toy", "memory", np.array([3, 1]), np.array([1, 0]), np.array([[2, 1], [0, 1]]), 1)
    >>> print(stats_table(stats).splitlines()[-1])
         1      1     0        1  1:1

    """
    train, labels = stats.train, stats.labels
    present = (labels > 0).sum(axis=1)
    lines = [
        f"dataset {stats.name} ({stats.source}): {int(train.sum())} train / {int(stats.test.sum())} "
        f"client test samples, {stats.test_global} global test, {len(train)} clients, "
        f"{labels.shape[1]} classes",
        f"train samples per client: min {int(train.min())}, median {float(np.median(train)):g}, "
        f"mean {float(train.mean()):.1f}, max {int(train.max())}; classes per client: "
        f"min {int(present.min())}, median {float(np.median(present)):g}, max {int(present.max())}",
    ]
    order = np.arange(len(train))
    if len(train) > rows:
        by_size = np.argsort(-train, kind="stable")
        order = np.concatenate([by_size[: rows // 2], by_size[-(rows - rows // 2) :]])
        lines.append(
            f"showing the {rows // 2} largest and {rows - rows // 2} smallest of {len(train)} clients"
        )
    lines.append(
        f"{'client':>6} {'train':>6} {'test':>5} {'classes':>8}  label histogram (train, label:count)"
    )
    for client in order:
        counts = labels[client]
        top = [c for c in np.argsort(-counts, kind="stable")[:HISTOGRAM_LABELS] if counts[c]]
        histogram = " ".join(f"{c}:{counts[c]}" for c in sorted(top))
        hidden = int(present[client]) - len(top)
        if hidden > 0:
            histogram += f" (+{hidden} more)"
        row = f"{client:>6} {train[client]:>6} {stats.test[client]:>5} {present[client]:>8}  {histogram}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def write_stats(stats: DataStats, parent: Path, folder: Path | None = None) -> Path:
    """Write ``data_stats.txt``, ``data_stats.json`` and ``data_stats.png`` atomically; return the folder.

    The folder is ``folder`` when given, else a new ``<parent>/<YYYYmmdd-HHMMSS>-data-<dataset>``
    (beside the run directories, which it is not: ``fedml runs list`` skips it).

    Raises
    ------
    ImportError
        When matplotlib is not installed (the text and JSON files are written first).
    OSError
        When the folder cannot be created or written.

    """
    target = folder or new_folder(parent, f"{time.strftime('%Y%m%d-%H%M%S')}-data-{stats.name}")
    target.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target / "data_stats.txt", stats_table(stats) + "\n")
    atomic_write_text(target / "data_stats.json", json.dumps(stats.to_dict()) + "\n")
    plot_stats(stats, target / "data_stats.png")
    return target


def plot_stats(stats: DataStats, path: Path) -> Path:
    """Draw training samples per client and a clients x labels heatmap; write the PNG atomically.

    Raises
    ------
    ImportError
        When matplotlib is not installed, naming the extra that installs it.

    """
    from fedml.plots import new_figure, save_png

    figure = new_figure(8.0, 6.0)
    sizes, heat = figure.subplots(2, 1)
    clients = len(stats.train)
    if clients <= PLOT_CLIENTS:
        sizes.bar(np.arange(clients), stats.train, width=0.8)
        sizes.set_xlabel("client")
    else:
        sizes.hist(stats.train, bins=50)
        sizes.set_xlabel("training samples")
        sizes.set_yscale("log")
    sizes.set_ylabel("training samples" if clients <= PLOT_CLIENTS else "clients")
    shown = np.sort(np.argsort(-stats.train, kind="stable")[:PLOT_CLIENTS])
    counts = stats.labels[shown].astype(np.float64)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    image = heat.imshow(fractions.T, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower")
    heat.set_xlabel("client" if clients <= PLOT_CLIENTS else f"the {len(shown)} largest clients")
    heat.set_ylabel("label")
    figure.colorbar(image, ax=heat, label="share of the client's samples")
    figure.suptitle(f"{stats.name}: {clients} clients")
    return save_png(figure, path)
