import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedml.core.privacy.secagg import field, shamir
from fedml.core.privacy.secagg.graph import default_neighbours, neighbour_graph, regular_degree
from fedml.core.privacy.secagg.settings import SecAggArgs
from fedml.core.privacy.secagg.state import flatten_state, unflatten
from fedml.errors import ConfigError, SecAggError


def random_bytes(seed):
    return np.random.default_rng(seed).bytes


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 20),
    st.integers(4, 30),
    st.floats(0.1, 10.0),
    st.integers(0, 2**31 - 1),
)
def test_dequantized_sum_is_within_the_bound(clients, length, bits, clip, seed):
    gen = torch.Generator().manual_seed(seed)
    vectors = [(torch.rand(length, generator=gen) * 2 - 1) * clip for _ in range(clients)]
    weights = [float(w) for w in torch.randint(0, 1000, (clients,), generator=gen)]
    total = np.zeros(length + 1, dtype=np.uint64)
    for vector, weight in zip(vectors, weights, strict=True):
        total += field.quantize(vector, weight, clip, bits, 1000.0)
    result, weight = field.dequantize(total, clip, bits)
    expected = sum(w * v.double() for w, v in zip(weights, vectors, strict=True))
    bound = field.sum_bound(clients, clip, bits) * (1 + 1e-9) + 1e-9 * float(expected.abs().max())
    assert float((result - expected).abs().max()) <= bound
    assert weight == sum(weights)


def test_quantization_clips_to_the_range():
    values = field.quantize(torch.tensor([5.0, -5.0]), 1.0, 1.0, 8, 1.0)
    result, _ = field.dequantize(values, 1.0, 8)
    assert result.tolist() == [1.0, -1.0]


@pytest.mark.parametrize(
    ("vector", "weight"),
    [
        (torch.tensor([float("nan")]), 1.0),
        (torch.ones(2, 2), 1.0),
        (torch.ones(2), -1.0),
        (torch.ones(2), 11.0),
    ],
)
def test_quantization_refuses_bad_inputs(vector, weight):
    with pytest.raises(SecAggError):
        field.quantize(vector, weight, 1.0, 16, 10.0)


def test_capacity_refuses_a_sum_that_could_wrap():
    field.check_capacity(1000, 24, 2.0**24)
    with pytest.raises(SecAggError, match="overflow"):
        field.check_capacity(1 << 20, 40, 2.0**24)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(1, 12), st.data())
def test_any_threshold_shares_recover_the_secret(secret, holders, data):
    threshold = data.draw(st.integers(1, holders))
    shares = shamir.split(secret, holders, threshold, random_bytes(data.draw(st.integers(0, 99))))
    chosen = sorted(data.draw(st.sets(st.integers(0, holders - 1), min_size=threshold, max_size=threshold)))
    assert shamir.combine([i + 1 for i in chosen], shares[chosen], len(secret)) == secret


def test_fewer_shares_than_the_threshold_do_not_recover_the_secret():
    secret = bytes(range(32))
    shares = shamir.split(secret, 10, 6, random_bytes(0))
    try:
        recovered = shamir.combine([1, 2, 3, 4, 5], shares[:5], 32)
    except SecAggError:
        recovered = None
    assert recovered != secret
    assert shamir.combine([1, 2, 3, 4, 5, 6], shares[:6], 32) == secret


def test_shares_are_field_elements_and_combine_checks_them():
    shares = shamir.split(b"key", 4, 2, random_bytes(1))
    assert shares.dtype == np.int64
    assert ((shares >= 0) & (shares < shamir.PRIME)).all()
    with pytest.raises(SecAggError):
        shamir.combine([1, 1], shares[:2], 3)
    with pytest.raises(SecAggError):
        shamir.combine([1, 2], shares[:2] + shamir.PRIME, 3)


@pytest.mark.parametrize(("clients", "k"), [(10, 3), (11, 3), (11, 4), (50, 13), (7, 6), (2, 1), (30, 29)])
def test_neighbour_graph_is_regular_and_symmetric(clients, k):
    ids = [f"c{i}" for i in range(clients)]
    graph = neighbour_graph(ids, k, np.random.default_rng(3))
    degree = regular_degree(clients, k)
    assert degree >= min(k, clients - 1)
    assert all(len(peers) == degree and c not in peers for c, peers in graph.items())
    assert all(c in graph[p] for c, peers in graph.items() for p in peers)


def test_neighbour_graph_is_seeded():
    ids = [str(i) for i in range(40)]
    first = neighbour_graph(ids, 5, np.random.default_rng(7))
    assert first == neighbour_graph(ids, 5, np.random.default_rng(7))
    assert first != neighbour_graph(ids, 5, np.random.default_rng(8))


def test_default_neighbours_grow_with_log_n():
    assert default_neighbours(500) == 19
    assert default_neighbours(3) == 2


def test_settings_default_threshold_is_a_majority_of_holders():
    assert SecAggArgs().threshold(9) == 5
    plus = SecAggArgs(sa_method="secagg_plus")
    assert plus.degree(100) == 15
    assert plus.threshold(100) == 9


@pytest.mark.parametrize(
    ("args", "clients"),
    [
        ({"sa_threshold": 5}, 4),
        ({"sa_threshold": 3}, 6),
        ({}, 1),
        ({"sa_bit_width": 48, "sa_max_weight": 2.0**30}, 100),
    ],
)
def test_settings_that_cannot_hold_are_refused(args, clients):
    with pytest.raises(SecAggError):
        SecAggArgs(**args).threshold(clients)


def test_settings_reject_bad_values_at_load():
    from fedml.config.sections import read_settings

    class Args:
        secure_aggregation_args = None
        sa_method = "plain"

    with pytest.raises(ConfigError, match="sa_method"):
        read_settings(Args(), SecAggArgs)


def test_flatten_and_unflatten_round_trip():
    state = {"w": torch.randn(3, 2), "b": torch.randn(4, dtype=torch.float64)}
    vector, spec = flatten_state(state)
    assert vector.dtype == torch.float32
    assert len(vector) == 10
    back = unflatten(vector, spec)
    assert back["b"].dtype == torch.float64
    assert torch.allclose(back["w"], state["w"])
    with pytest.raises(SecAggError):
        flatten_state({"count": torch.tensor([1])})
    with pytest.raises(SecAggError):
        unflatten(vector[:-1], spec)
