import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedml.data.partition import (
    partition_labels,
    partition_methods,
    register_partitioner,
    split_test_like_train,
)
from fedml.errors import ConfigError, DataError

BALANCED = np.repeat(np.arange(10), 500)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def assert_partition(parts: list[np.ndarray], num_samples: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "each client's indices are sorted and unique"
    flat = np.concatenate(parts)
    assert np.array_equal(np.sort(flat), np.arange(num_samples))


def label_skew(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> float:
    """Mean total-variation distance between each client's label distribution and the global one."""
    global_dist = np.bincount(labels, minlength=num_classes) / labels.size
    distances = []
    for part in parts:
        local = np.bincount(labels[part], minlength=num_classes) / part.size
        distances.append(0.5 * np.abs(local - global_dist).sum())
    return float(np.mean(distances))


@st.composite
def labels_and_clients(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    labels = np.array(draw(st.lists(st.integers(0, 9), min_size=1, max_size=300)))
    num_clients = draw(st.integers(1, labels.size))
    return labels, num_clients


@settings(max_examples=60, deadline=None)
@given(case=labels_and_clients(), seed=st.integers(0, 2**32 - 1))
def test_homo_is_disjoint_covering_and_balanced(case: tuple[np.ndarray, int], seed: int) -> None:
    labels, num_clients = case

    parts = partition_labels(labels, num_clients, "homo", rng(seed))

    assert_partition(parts, labels.size, num_clients)
    sizes = [part.size for part in parts]
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(
    case=labels_and_clients(),
    seed=st.integers(0, 2**32 - 1),
    alpha=st.sampled_from([0.01, 0.1, 0.5, 1.0, 100.0]),
)
def test_hetero_is_disjoint_covering_and_never_empty(
    case: tuple[np.ndarray, int], seed: int, alpha: float
) -> None:
    labels, num_clients = case

    parts = partition_labels(labels, num_clients, "hetero", rng(seed), alpha=alpha)

    assert_partition(parts, labels.size, num_clients)
    assert min(part.size for part in parts) >= 1


def test_hetero_tiny_alpha_many_clients_has_no_empty_client() -> None:
    parts = partition_labels(BALANCED, 1000, "hetero", rng(3), alpha=0.01)

    assert_partition(parts, BALANCED.size, 1000)
    assert min(part.size for part in parts) >= 1


@pytest.mark.parametrize("method", ["homo", "hetero", "shards"])
def test_same_seed_same_split_different_seed_different_split(method: str) -> None:
    first = partition_labels(BALANCED, 20, method, rng(7))
    again = partition_labels(BALANCED, 20, method, rng(7))
    other = partition_labels(BALANCED, 20, method, rng(8))

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_partition_does_not_touch_global_numpy_state() -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)

    partition_labels(BALANCED, 10, "hetero", rng(0))

    assert np.random.rand() == expected


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    skews = {
        alpha: label_skew(BALANCED, partition_labels(BALANCED, 20, "hetero", rng(1), alpha=alpha), 10)
        for alpha in (0.1, 1.0, 10.0)
    }

    assert skews[0.1] > skews[1.0] > skews[10.0]
    assert skews[0.1] > 0.5
    assert skews[10.0] < 0.2


@pytest.mark.parametrize("shards_per_client", [1, 2, 3])
def test_shards_give_each_client_few_labels(shards_per_client: int) -> None:
    parts = partition_labels(BALANCED, 50, "shards", rng(2), shards_per_client=shards_per_client)

    assert_partition(parts, BALANCED.size, 50)
    label_counts = [np.unique(BALANCED[part]).size for part in parts]
    assert max(label_counts) <= 2 * shards_per_client
    assert np.median(label_counts) <= shards_per_client
    sizes = [part.size for part in parts]
    assert max(sizes) - min(sizes) <= shards_per_client


def test_shards_are_label_pure_when_shards_align_with_classes() -> None:
    parts = partition_labels(BALANCED, 10, "shards", rng(4), shards_per_client=2)

    assert all(np.unique(BALANCED[part]).size <= 2 for part in parts)
    assert sum(np.unique(BALANCED[part]).size for part in parts) <= 20


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_clients": 0}, "train_args.client_num_in_total"),
        ({"num_clients": 5001}, "train_args.client_num_in_total"),
        ({"num_clients": 2.5}, "train_args.client_num_in_total"),
        ({"method": "hetero", "alpha": 0.0}, "data_args.partition_alpha"),
        ({"method": "hetero", "alpha": -1.0}, "data_args.partition_alpha"),
        ({"method": "hetero", "alpha": float("nan")}, "data_args.partition_alpha"),
        ({"method": "shards", "shards_per_client": 0}, "data_args.shards_per_client"),
        ({"method": "shards", "num_clients": 2600, "shards_per_client": 2}, "data_args.shards_per_client"),
        ({"method": "dirichlet"}, "data_args.partition_method"),
    ],
)
def test_invalid_settings_name_the_key(kwargs: dict, key: str) -> None:
    call = {"num_clients": 10, "method": "homo", **kwargs}

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        partition_labels(BALANCED, call.pop("num_clients"), call.pop("method"), rng(), **call)


def test_unknown_method_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        partition_labels(BALANCED, 10, "iid", rng())

    for name in ("homo", "hetero", "shards"):
        assert name in str(info.value)


def test_empty_or_2d_labels_are_data_errors() -> None:
    with pytest.raises(DataError):
        partition_labels(np.array([], dtype=np.int64), 1, "homo", rng())
    with pytest.raises(DataError):
        partition_labels(np.zeros((4, 2), dtype=np.int64), 1, "homo", rng())


def test_registered_partitioner_is_used_and_checked() -> None:
    def first_takes_all(labels, num_clients, rng, **_):
        return [np.arange(labels.size)] + [np.array([], dtype=np.int64)] * (num_clients - 1)

    def overlapping(labels, num_clients, rng, **_):
        return [np.arange(labels.size)] * num_clients

    register_partitioner("test_first_takes_all", first_takes_all)
    register_partitioner("test_overlapping", overlapping)

    parts = partition_labels(BALANCED, 3, "test_first_takes_all", rng())
    assert "test_first_takes_all" in partition_methods()
    assert [part.size for part in parts] == [BALANCED.size, 0, 0]
    with pytest.raises(DataError, match="test_overlapping"):
        partition_labels(BALANCED, 3, "test_overlapping", rng())


def test_split_test_like_train_follows_train_distribution() -> None:
    train_labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    test_labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 3])
    client_train = [np.array([0, 1, 3]), np.array([2, 4, 5]), np.array([6, 7, 8])]

    parts = split_test_like_train(train_labels, test_labels, client_train, num_classes=4)

    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist())), "disjoint"
    assert sorted(flat.tolist()) == list(range(10)), "every test sample of a trained class, none of class 3"
    # client 0 holds 2 of 3 class-0 train samples, client 1 holds 1: 4 class-0 test samples -> 3 / 1
    assert [int((test_labels[part] == 0).sum()) for part in parts] == [3, 1, 0]
    # class 2 is held 1 : 2 by clients 1 and 2; client 0 has none, so it gets no class-2 test sample
    assert [int((test_labels[part] == 2).sum()) for part in parts] == [0, 1, 2]


def test_split_test_like_train_on_hetero_partition() -> None:
    test_labels = np.repeat(np.arange(10), 100)
    client_train = partition_labels(BALANCED, 30, "hetero", rng(5), alpha=0.1)

    parts = split_test_like_train(BALANCED, test_labels, client_train, num_classes=10)

    flat = np.concatenate(parts)
    assert np.array_equal(np.sort(flat), np.arange(test_labels.size))
    for train_part, test_part in zip(client_train, parts, strict=True):
        train_classes = set(np.unique(BALANCED[train_part]).tolist())
        assert set(np.unique(test_labels[test_part]).tolist()) <= train_classes
    sizes_train = np.array([part.size for part in client_train]) / BALANCED.size
    sizes_test = np.array([part.size for part in parts]) / test_labels.size
    assert np.abs(sizes_train - sizes_test).max() < 0.01


def test_split_test_like_train_rejects_out_of_range_labels() -> None:
    with pytest.raises(DataError, match="test labels"):
        split_test_like_train(np.array([0, 1]), np.array([0, 5]), [np.array([0, 1])], num_classes=2)
