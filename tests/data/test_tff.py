import numpy as np
import pytest
import torch

import fedml.data
from fedml.config import load_arguments
from fedml.data.leaf import ALL_LETTERS
from fedml.errors import DataError

from .formats import data_args, write_tff

pytest.importorskip("h5py")


def emnist_client(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.random((n, 28, 28), dtype=np.float32),
        "label": rng.integers(0, 62, n).astype(np.int32),
    }


def test_fed_emnist_is_split_by_its_clients(tmp_path):
    write_tff(tmp_path / "fed_emnist_train.h5", {"f0002": emnist_client(4, 1), "f0001": emnist_client(3, 2)})
    write_tff(tmp_path / "fed_emnist_test.h5", {"f0002": emnist_client(2, 3), "f0001": emnist_client(1, 4)})
    args = load_arguments(overrides={"dataset": "fed_emnist", "data_cache_dir": str(tmp_path)})

    dataset, output_dim = fedml.data.load(args)

    assert output_dim == 62
    assert dataset.input_shape == (1, 28, 28)
    assert [dataset.local_sample_num(c) for c in range(2)] == [3, 4]
    assert [len(dataset.local_test(c)) for c in range(2)] == [1, 2]
    x, _ = dataset.local_train(0).tensors()
    assert torch.equal(x[:, 0], torch.from_numpy(emnist_client(3, 2)["pixels"]))


def test_fed_cifar100_is_channels_first_normalised_and_augmented(tmp_path):
    rng = np.random.default_rng(0)

    def client(n):
        return {
            "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 100, n),
        }

    folder = tmp_path / "fed_cifar100"
    write_tff(folder / "fed_cifar100_train.h5", {"0": client(3), "1": client(2)})
    write_tff(folder / "fed_cifar100_test.h5", {"9": client(2)})

    dataset, output_dim = fedml.data.load(
        data_args(dataset="fed_cifar100", data_cache_dir=str(tmp_path), partition_method="natural")
    )

    assert output_dim == 100
    assert dataset.input_shape == (3, 32, 32)
    assert dataset.augments_training
    # TFF's test clients are other people: their samples are in the global test set only.
    assert dataset.test_data_num == 2
    assert [len(dataset.local_test(c)) for c in range(2)] == [0, 0]
    assert abs(float(dataset.train_x.mean())) < 1.0


def test_fed_shakespeare_makes_a_sample_per_character_over_leafs_alphabet(tmp_path):
    snippets = np.array([b"To be, or not to be", b"Ay"], dtype=object)
    write_tff(tmp_path / "shakespeare_train.h5", {"HAMLET": {"snippets": snippets}})
    write_tff(tmp_path / "shakespeare_test.h5", {"HAMLET": {"snippets": np.array([b"Hi"], dtype=object)}})

    dataset, output_dim = fedml.data.load(
        data_args(
            dataset="fed_shakespeare",
            data_cache_dir=str(tmp_path),
            partition_method="natural",
            client_num_in_total=1,
        )
    )

    assert output_dim == 80
    x, y = dataset.local_train(0).tensors()
    assert x.shape == (len("To be, or not to be") + 2, 80)
    assert "".join(ALL_LETTERS[i] for i in y[:5].tolist()) == "To be"
    assert "".join(ALL_LETTERS[i] for i in x[3].tolist()).endswith(" " * 77 + "To ")
    assert len(dataset.local_test(0)) == 2


def test_missing_files_and_bad_groups_name_the_file_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"fed_emnist_train\.h5 or fed_emnist_test\.h5 missing") as err:
        fedml.data.load(data_args(dataset="fed_emnist", data_cache_dir=str(tmp_path)))
    assert "examples/<client_id>/" in str(err.value)

    write_tff(tmp_path / "fed_emnist_train.h5", {"a": {"pixels": np.zeros((1, 28, 28))}})
    write_tff(tmp_path / "fed_emnist_test.h5", {"a": emnist_client(1, 0)})
    with pytest.raises(DataError, match="examples/a lacks label") as err:
        fedml.data.load(data_args(dataset="fed_emnist", data_cache_dir=str(tmp_path)))
    assert str(tmp_path / "fed_emnist_train.h5") in str(err.value)

    (tmp_path / "fed_emnist_train.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not an HDF5 file"):
        fedml.data.load(data_args(dataset="fed_emnist", data_cache_dir=str(tmp_path)))
