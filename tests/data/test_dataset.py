from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fedml.data
from fedml.data import (
    ClientData,
    FederatedDataset,
    RawData,
    dataset_names,
    input_shape,
    load,
    register_dataset,
)
from fedml.errors import ConfigError, DataError


def toy(num_train: int = 12, num_test: int = 6) -> FederatedDataset:
    train_x = torch.arange(num_train * 2, dtype=torch.float32).reshape(num_train, 2)
    train_y = torch.arange(num_train) % 3
    test_x = torch.zeros(num_test, 2)
    test_y = torch.arange(num_test) % 3
    clients = [list(range(0, 5)), list(range(5, 9)), list(range(9, num_train))]
    return FederatedDataset.from_tensors(train_x, train_y, test_x, test_y, clients, batch_size=2)


def mnist_args(**overrides) -> SimpleNamespace:
    base = {
        "dataset": "mnist",
        "data_cache_dir": None,
        "download": False,
        "partition_method": "hetero",
        "partition_alpha": 0.5,
        "shards_per_client": 2,
        "client_num_in_total": 10,
        "batch_size": 16,
        "random_seed": 0,
    }
    return SimpleNamespace(**{**base, **overrides})


def test_client_data_is_a_view_of_the_shared_tensors() -> None:
    dataset = toy()

    local = dataset.local_train(1)

    assert len(local) == 4
    assert local.x is dataset.train_x
    assert local.y is dataset.train_y
    assert local.indices.dtype == torch.int64
    x, y = local.tensors()
    assert torch.equal(x, dataset.train_x[5:9])
    assert torch.equal(y, dataset.train_y[5:9])


def test_iteration_yields_ordered_batches_with_short_last_batch() -> None:
    local = toy().local_train(0)

    batches = list(local)

    assert [len(y) for _, y in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([x for x, _ in batches]), local.tensors()[0])


def test_seeded_shuffle_is_reproducible_and_covers_all_samples() -> None:
    local = toy(num_train=40).train_global

    first = [y for _, y in local.batches(8, generator=torch.Generator().manual_seed(3))]
    again = [y for _, y in local.batches(8, generator=torch.Generator().manual_seed(3))]
    other = [y for _, y in local.batches(8, generator=torch.Generator().manual_seed(4))]
    order = torch.cat([x[:, 0] for x, _ in local.batches(8, generator=torch.Generator().manual_seed(3))])

    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert sorted((order / 2).long().tolist()) == list(range(40))
    assert (order / 2).long().tolist() != list(range(40))


def test_bad_batch_size_is_rejected() -> None:
    with pytest.raises(DataError, match="batch_size"):
        list(toy().local_train(0).batches(0))


def test_dataset_unpacks_into_fedml_eight_values() -> None:
    dataset = toy()

    (
        train_data_num,
        test_data_num,
        train_data_global,
        test_data_global,
        train_data_local_num_dict,
        train_data_local_dict,
        test_data_local_dict,
        class_num,
    ) = dataset

    assert (train_data_num, test_data_num, class_num) == (12, 6, 3)
    assert isinstance(train_data_global, ClientData)
    assert len(train_data_global) == 12
    assert len(test_data_global) == 6
    assert train_data_local_num_dict == {0: 5, 1: 4, 2: 3}
    assert {i: len(data) for i, data in train_data_local_dict.items()} == train_data_local_num_dict
    assert sum(len(data) for data in test_data_local_dict.values()) == 6
    assert dataset.input_shape == (2,)
    assert dataset.client_num == 3


def test_default_client_test_sets_follow_train_labels() -> None:
    train_y = torch.tensor([0, 0, 0, 1, 1, 1])
    test_y = torch.tensor([0, 1, 0, 1])
    x = torch.zeros(6, 1)

    dataset = FederatedDataset.from_tensors(x, train_y, x[:4], test_y, [[0, 1, 2], [3, 4, 5]])

    assert dataset.output_dim == 2
    assert dataset.test_y[dataset.client_test_indices[0]].tolist() == [0, 0]
    assert dataset.test_y[dataset.client_test_indices[1]].tolist() == [1, 1]


def test_from_tensors_accepts_numpy_and_explicit_test_indices() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    y = np.array([0, 1, 0, 1])

    dataset = FederatedDataset.from_tensors(
        x, y, x, y, [np.array([0, 1]), np.array([2, 3])], [[0], [1, 2, 3]]
    )

    assert isinstance(dataset.train_x, torch.Tensor)
    assert dataset.train_y.dtype == torch.int64
    assert dataset.local_test(1).indices.tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_y": torch.zeros(5, dtype=torch.int64)}, "train_x has 6 samples but train_y has 5"),
        ({"test_x": torch.zeros(4, 7)}, "differ in shape"),
        ({"train_y": torch.zeros(6)}, "integer class labels"),
        ({"train_y": torch.zeros(6, 1, dtype=torch.int64)}, "1-D"),
        ({"client_train_indices": [[0, 1], [2, 6]]}, r"client_train_indices\[1\] has indices outside 0..5"),
        ({"client_train_indices": [[0, -1]]}, "outside"),
        ({"client_train_indices": [[0.5, 1.0]]}, "integers"),
        ({"client_train_indices": []}, "at least one client"),
        ({"client_test_indices": [[0], [1]]}, "2 entries but there are 1 clients"),
        ({"client_test_indices": [[9]]}, "client_test_indices"),
        ({"output_dim": 1}, "output_dim"),
        ({"batch_size": 0}, "batch_size"),
        ({"train_x": [[1.0]] * 6}, "torch.Tensor or numpy array"),
    ],
)
def test_from_tensors_validation_errors(change: dict, message: str) -> None:
    x = torch.zeros(6, 3)
    kwargs = {
        "train_x": x,
        "train_y": torch.tensor([0, 1, 0, 1, 0, 1]),
        "test_x": x[:4],
        "test_y": torch.tensor([0, 1, 0, 1]),
        "client_train_indices": [[0, 1, 2, 3, 4, 5]],
        **change,
    }

    with pytest.raises(DataError, match=message):
        FederatedDataset.from_tensors(**kwargs)


@pytest.mark.parametrize("client", [3, -1, "0", 1.0])
def test_bad_client_index_is_a_clear_error(client) -> None:
    with pytest.raises(DataError, match=r"client index must be an integer in 0\.\.2"):
        toy().local_train(client)


def test_load_mnist_embedded_is_deterministic_and_partitioned() -> None:
    dataset, output_dim = load(mnist_args())
    again, _ = load(mnist_args())
    other, _ = load(mnist_args(random_seed=1))

    assert output_dim == 10
    assert dataset.name == "mnist"
    assert "embedded" in dataset.source
    assert dataset.input_shape == (1, 28, 28) == input_shape("mnist")
    assert dataset.client_num == 10
    assert dataset.batch_size == 16
    assert sum(dataset.train_data_local_num_dict.values()) == 4000
    assert sum(len(dataset.local_test(i)) for i in range(10)) == 1000
    assert all(
        torch.equal(a, b)
        for a, b in zip(dataset.client_train_indices, again.client_train_indices, strict=True)
    )
    assert not all(
        torch.equal(a, b)
        for a, b in zip(dataset.client_train_indices, other.client_train_indices, strict=True)
    )


def test_load_does_not_touch_global_rngs() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(1).item(), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)

    load(mnist_args(partition_method="shards"))

    assert (torch.rand(1).item(), np.random.rand()) == expected


def test_load_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"data_args\.dataset.*mnist"):
        load(mnist_args(dataset="mnsit"))


def test_load_reports_missing_arguments() -> None:
    args = mnist_args()
    del args.random_seed

    with pytest.raises(ConfigError, match="random_seed"):
        load(args)


def test_registered_dataset_is_loaded_and_shape_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fedml.data.DATASETS, "_entries", dict(fedml.data.DATASETS._entries))

    def tiny(args) -> RawData:
        x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
        y = torch.arange(20) % 2
        return RawData(x, y, x[:6], y[:6], source="in memory")

    register_dataset("tiny", tiny, input_shape=(2,), output_dim=2)
    register_dataset("tiny_wrong_shape", tiny, input_shape=(3,), output_dim=2)

    dataset, output_dim = load(mnist_args(dataset="tiny", partition_method="homo", client_num_in_total=4))

    assert "tiny" in dataset_names()
    assert output_dim == 2
    assert dataset.source == "in memory"
    assert list(dataset.train_data_local_num_dict.values()) == [5, 5, 5, 5]
    with pytest.raises(DataError, match="registered as"):
        load(mnist_args(dataset="tiny_wrong_shape"))
