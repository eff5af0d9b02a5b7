"""Every registered partitioner, and the ones added for FL benchmarks: power_law, quantity_skew, natural."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedml.data.partition import group_clients, partition_labels, partition_methods
from fedml.errors import ConfigError, DataError

# Taken at import, before other tests register deliberately broken partitioners.
BUILTIN = partition_methods()


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    labels = np.array(draw(st.lists(st.integers(0, 5), min_size=1, max_size=200)))
    groups = np.array(draw(st.lists(st.integers(0, 30), min_size=labels.size, max_size=labels.size)))
    num_clients = draw(st.integers(1, min(labels.size, np.unique(groups).size)))
    return labels, groups, num_clients


def test_the_new_methods_are_registered():
    assert {"homo", "hetero", "shards", "power_law", "quantity_skew", "natural"} <= set(BUILTIN)


@settings(max_examples=40, deadline=None)
@given(case=cases(), seed=st.integers(0, 2**32 - 1))
def test_every_partitioner_covers_each_sample_once_and_is_seeded(case, seed):
    labels, groups, num_clients = case
    for method in BUILTIN:

        def run(s, method=method):
            rng = np.random.default_rng(s)
            return partition_labels(labels, num_clients, method, rng, shards_per_client=1, groups=groups)

        parts = run(seed)

        assert len(parts) == num_clients, method
        flat = np.concatenate(parts)
        assert np.array_equal(np.sort(flat), np.arange(labels.size)), method
        assert all(np.array_equal(a, b) for a, b in zip(parts, run(seed), strict=True)), method


@pytest.mark.parametrize("method", ["power_law", "quantity_skew"])
def test_size_skewed_methods_give_every_client_a_sample_and_unequal_sizes(method):
    labels = np.arange(5000) % 10

    parts = partition_labels(labels, 50, method, np.random.default_rng(0), alpha=0.5)

    sizes = np.array([p.size for p in parts])
    assert sizes.min() >= 1
    assert sizes.max() > 5 * np.median(sizes)


def test_power_law_sizes_are_heavy_tailed_like_leaf():
    labels = np.zeros(100_000, dtype=np.int64)

    parts = partition_labels(labels, 1000, "power_law", np.random.default_rng(1))

    sizes = np.sort([p.size for p in parts])[::-1]
    # lognormal(0, 2): the largest 10% of clients hold most of the data.
    assert sizes[:100].sum() > 0.5 * sizes.sum()


def test_quantity_skew_grows_as_alpha_shrinks():
    labels = np.zeros(20_000, dtype=np.int64)

    def spread(alpha):
        parts = partition_labels(labels, 20, "quantity_skew", np.random.default_rng(3), alpha=alpha)
        return np.std([p.size for p in parts])

    assert spread(0.1) > spread(100.0) * 3


def test_natural_gives_one_client_per_group_in_sorted_id_order():
    groups = np.array([30, 10, 20, 10, 30, 30])

    parts = partition_labels(
        np.zeros(6, dtype=np.int64), 3, "natural", np.random.default_rng(0), groups=groups
    )

    assert [p.tolist() for p in parts] == [[1, 3], [2], [0, 4, 5]]


def test_natural_with_fewer_clients_never_splits_a_group():
    groups = np.repeat(np.arange(12), 5)

    parts = partition_labels(
        np.zeros(60, dtype=np.int64), 5, "natural", np.random.default_rng(0), groups=groups
    )

    for part in parts:
        for group in np.unique(groups[part]):
            assert np.isin(np.flatnonzero(groups == group), part).all()
    assert sorted(len(np.unique(groups[p])) for p in parts) == [2, 2, 2, 3, 3]


def test_natural_needs_groups_and_at_most_one_client_per_group():
    with pytest.raises(DataError, match="natural needs a dataset with natural clients"):
        partition_labels(np.zeros(10, dtype=np.int64), 2, "natural", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="only 2 clients"):
        group_clients(np.array([1, 1, 2]), 3, np.random.default_rng(0))


def test_groups_must_match_the_labels():
    with pytest.raises(DataError, match="one id per sample"):
        partition_labels(np.zeros(4, dtype=np.int64), 2, "homo", np.random.default_rng(0), groups=np.zeros(3))
