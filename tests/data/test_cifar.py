import pickle

import numpy as np
import pytest
import torch

import fedml.data
from fedml.data import ClientData, cifar
from fedml.data.cifar import CIFAR10, RandomCropFlip
from fedml.errors import DataError

from .formats import data_args, write_cifar10, write_cifar100


def test_cifar10_loads_the_python_pickles_normalised_with_augmentation(tmp_path):
    folder = write_cifar10(tmp_path)
    first = pickle.loads((folder / "data_batch_1").read_bytes())

    dataset, output_dim = fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path)))

    assert output_dim == 10
    assert (dataset.train_data_num, dataset.test_data_num, dataset.input_shape) == (30, 6, (3, 32, 32))
    assert dataset.train_y[:6].tolist() == first[b"labels"]
    pixel = first[b"data"][0, 0] / 255.0
    assert dataset.train_x[0, 0, 0, 0].item() == pytest.approx(
        (pixel - CIFAR10.mean[0]) / CIFAR10.std[0], rel=1e-5
    )
    assert dataset.augments_training
    assert dataset.local_train(0).transform is not None
    assert dataset.local_test(0).transform is None
    assert dataset.test_global.transform is None


def test_augment_false_leaves_training_batches_as_stored(tmp_path):
    write_cifar10(tmp_path)

    dataset, _ = fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path), augment=False))

    assert not dataset.augments_training


def test_cifar100_uses_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path)
    fine = pickle.loads((folder / "train").read_bytes())[b"fine_labels"]

    dataset, output_dim = fedml.data.load(data_args(dataset="cifar100", data_cache_dir=str(tmp_path)))

    assert output_dim == 100
    assert dataset.train_y.tolist() == fine


def test_missing_files_name_each_file_and_the_folder(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    (folder / "test_batch").unlink()

    with pytest.raises(DataError) as err:
        fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path)))

    message = str(err.value)
    assert "missing data_batch_3, test_batch" in message
    assert str(folder) in message
    assert "\n" not in message


def test_a_download_fills_the_folder_when_the_files_are_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(layout, root):
        calls.append(root)
        write_cifar10(root)
        return True

    monkeypatch.setattr(cifar, "_download", fake_download)

    dataset, _ = fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path), download=True))

    assert calls == [tmp_path]
    assert dataset.source.startswith("torchvision download")


def test_no_network_means_no_download_and_the_files_error(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "_network_reachable", lambda host: False)

    with pytest.raises(DataError, match="missing data_batch_1"):
        fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path), download=True))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"not a pickle", "not a CIFAR python pickle"),
        (pickle.dumps({b"data": np.zeros((2, 10), dtype=np.uint8), b"labels": [0, 1]}), "N x 3072"),
        (
            pickle.dumps({b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 10]}),
            "one label in 0..9",
        ),
        (pickle.dumps(Evil()), "refusing to load builtins.print"),
    ],
)
def test_malformed_or_unsafe_files_are_data_errors_naming_the_file(tmp_path, content, match):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_2").write_bytes(content)

    with pytest.raises(DataError, match=match) as err:
        fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path)))

    assert str(folder / "data_batch_2") in str(err.value)


def brute_force_is_crop_or_flip(original, augmented, fill, padding=4):
    c, h, w = original.shape
    padded = torch.tensor(fill).view(c, 1, 1).expand(c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, padding : padding + h, padding : padding + w] = original
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(crop, augmented) or torch.equal(crop.flip(-1), augmented):
                return True
    return False


def test_random_crop_flip_outputs_a_padded_crop_or_its_mirror():
    x = torch.randn(16, 3, 32, 32)
    fill = (-1.0, -2.0, -3.0)

    out = RandomCropFlip(fill)(x, torch.Generator().manual_seed(5))

    assert out.shape == x.shape
    assert all(brute_force_is_crop_or_flip(x[i], out[i], fill) for i in range(len(x)))
    assert not torch.equal(out, x)


def test_augmented_batches_are_reproducible_and_keep_the_first_epochs_order(tmp_path):
    write_cifar10(tmp_path)
    plain, _ = fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path), augment=False))
    augmented, _ = fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path)))

    def epochs(dataset, seed):
        generator = torch.Generator().manual_seed(seed)
        data = dataset.local_train(0)
        return [list(data.batches(4, generator)) for _ in range(2)]

    first, again, reference = epochs(augmented, 7), epochs(augmented, 7), epochs(plain, 7)

    flat = [b for epoch in first for b in epoch]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(flat, [b for e in again for b in e], strict=True))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first[0], reference[0], strict=True))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first[0], reference[0], strict=True))


def test_each_epoch_augments_a_sample_anew():
    x = torch.randn(1, 3, 32, 32)
    data = ClientData(
        x, torch.zeros(1, dtype=torch.int64), torch.arange(1), 1, RandomCropFlip((0.0, 0.0, 0.0))
    )
    generator = torch.Generator().manual_seed(0)

    views = [next(data.batches(1, generator))[0] for _ in range(6)]

    assert len({tuple(v.flatten()[:50].tolist()) for v in views}) > 1


def test_pickles_written_by_python_2_numpy_load(tmp_path):
    folder = write_cifar10(tmp_path)
    batch = pickle.loads((folder / "data_batch_1").read_bytes())
    # The real files come from Python 2's numpy, which names numpy.core rather than numpy._core.
    legacy = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in legacy
    (folder / "data_batch_1").write_bytes(legacy)

    dataset, _ = fedml.data.load(data_args(dataset="cifar10", data_cache_dir=str(tmp_path)))

    assert dataset.train_y[:6].tolist() == batch[b"labels"]


@pytest.mark.parametrize(("augment", "engine"), [(True, "sequential"), (False, "vectorized")])
def test_an_augmenting_dataset_trains_sequentially(tmp_path, make_args, augment, engine):
    from fedml.core.algorithms import create_algorithm
    from fedml.simulation.engine import choose_engine

    write_cifar10(tmp_path)
    args = make_args(
        dataset="cifar10", model="lr", data_cache_dir=str(tmp_path), augment=augment, engine="vectorized"
    )
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    chosen, _ = choose_engine(
        args, torch.device("cpu"), model, create_algorithm(args), dataset, custom_trainer=False
    )
    assert chosen == engine
