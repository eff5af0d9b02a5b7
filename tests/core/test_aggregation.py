import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedml.core.aggregation import finite_states, is_finite_state, stacked_rows, weighted_mean
from fedml.errors import AggregationError

weights = st.floats(min_value=0.1, max_value=1000, allow_nan=False)


@st.composite
def updates(draw, min_clients=1, max_clients=6):
    n = draw(st.integers(min_clients, max_clients))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    return [
        (draw(weights), {"w": torch.randn(3, 2, generator=gen), "b": torch.randn(2, generator=gen)})
        for _ in range(n)
    ]


def close(a, b):
    return all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-5) for k in a)


@settings(max_examples=50, deadline=None)
@given(updates(min_clients=2), st.randoms())
def test_order_does_not_matter(pairs, rnd):
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert close(weighted_mean(pairs), weighted_mean(shuffled))


@settings(max_examples=30, deadline=None)
@given(updates(max_clients=1))
def test_one_client_returns_its_own_state(pairs):
    result = weighted_mean(pairs)
    assert all(torch.equal(result[k], pairs[0][1][k]) for k in result)


@settings(max_examples=50, deadline=None)
@given(updates(min_clients=2), st.floats(min_value=0.01, max_value=100))
def test_scaling_all_weights_changes_nothing(pairs, factor):
    scaled = [(w * factor, s) for w, s in pairs]
    assert close(weighted_mean(pairs), weighted_mean(scaled))


@settings(max_examples=30, deadline=None)
@given(updates(min_clients=2))
def test_equal_weights_give_the_plain_mean(pairs):
    equal = [(1.0, s) for _, s in pairs]
    expected = {k: torch.stack([s[k] for _, s in pairs]).mean(0) for k in pairs[0][1]}
    assert close(weighted_mean(equal), expected)


def test_weights_are_sample_counts():
    result = weighted_mean([(1, {"w": torch.tensor([0.0])}), (3, {"w": torch.tensor([4.0])})])
    assert result["w"].item() == pytest.approx(3.0)


def test_inputs_are_not_mutated():
    a, b = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
    weighted_mean([(1, a), (1, b)])
    assert torch.equal(a["w"], torch.ones(2))
    assert torch.equal(b["w"], torch.zeros(2))


def test_integer_buffers_are_rounded_back_to_their_dtype():
    result = weighted_mean([(1, {"n": torch.tensor(3)}), (1, {"n": torch.tensor(6)})])
    assert result["n"].dtype == torch.int64
    assert result["n"].item() in (4, 5)


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([], "no client updates"),
        ([(-1, {"w": torch.ones(1)})], "non-negative"),
        ([(float("nan"), {"w": torch.ones(1)})], "non-negative"),
        ([(0, {"w": torch.ones(1)})], "sum to 0"),
        ([(1, {"w": torch.ones(1)}), (1, {"v": torch.ones(1)})], "missing \\['w'\\]"),
        ([(1, {"w": torch.ones(1)}), (1, {"w": torch.ones(2)})], "'w' has shape \\(2,\\)"),
    ],
)
def test_bad_updates_raise_aggregation_error(pairs, match):
    with pytest.raises(AggregationError, match=match):
        weighted_mean(pairs)


def test_is_finite_state():
    assert is_finite_state({"w": torch.ones(2), "n": torch.tensor(1)})
    assert not is_finite_state({"w": torch.tensor([1.0, float("nan")])})
    assert not is_finite_state({"w": torch.tensor([float("inf")])})


def test_finite_states_agrees_with_is_finite_state():
    good = {"w": torch.ones(3), "n": torch.tensor(2)}
    nan = {"w": torch.tensor([1.0, float("nan"), 0.0]), "n": torch.tensor(2)}
    inf = {"w": torch.tensor([float("-inf"), 0.0, 0.0]), "n": torch.tensor(2)}
    odd = {"w": torch.ones(4), "n": torch.tensor(2)}
    assert finite_states([good, nan, good, inf]) == [True, False, True, False]
    assert finite_states([good, odd, nan]) == [True, True, False]
    assert finite_states([]) == []
    empty = [
        {"w": torch.ones(2), "e": torch.empty(0)},
        {"w": torch.tensor([0.0, float("inf")]), "e": torch.empty(0)},
    ]
    assert finite_states(empty) == [True, False]


def _rows_states(stacked: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """States whose tensors are the rows of ``stacked``, as the vectorized engine returns them."""
    return [{"w": row} for row in stacked]


def test_rows_of_one_tensor_are_checked_in_place_and_exactly():
    big = torch.finfo(torch.float32).max
    stacked = torch.ones(4, 3, 2)
    stacked[1, 2, 0] = float("nan")
    stacked[2, 0, 1] = float("-inf")
    stacked[3] = big  # finite values whose sum overflows: still finite
    states = _rows_states(stacked)
    assert stacked_rows([s["w"] for s in states]) is not None
    assert finite_states(states) == [True, False, False, True]
    assert finite_states(states) == [is_finite_state(s) for s in states]


def test_finite_tensors_whose_sums_overflow_together_are_finite():
    # Each tensor's sum is finite, but the check adds them up over the names: the state whose total
    # overflows must be checked value by value, not dropped.
    half = torch.finfo(torch.float32).max / 2
    w, b = torch.zeros(3, 4), torch.zeros(3, 2)
    w[1], b[1] = half / 2, half
    w[2, 0], b[2, 1] = float("nan"), half
    states = [{"w": w[i], "b": b[i]} for i in range(3)]
    assert stacked_rows([s["b"] for s in states]) is not None
    assert finite_states(states) == [True, True, False]


def test_rows_that_are_not_consecutive_are_not_viewed():
    stacked = torch.arange(24.0).view(4, 3, 2)
    assert stacked_rows([stacked[0], stacked[2]]) is None
    assert stacked_rows([stacked[1], stacked[0]]) is None
    assert stacked_rows([stacked[0], stacked[1].clone()]) is None
    assert stacked_rows([stacked[0, :, :1], stacked[1, :, :1]]) is None
    assert torch.equal(stacked_rows([stacked[1], stacked[2]]), stacked[1:3])


def test_weighted_mean_of_stacked_rows_equals_the_one_by_one_mean():
    stacked = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(0))
    weights = [3.0, 1.0, 0.0, 7.0, 2.0]
    in_place = weighted_mean(list(zip(weights, _rows_states(stacked), strict=True)))
    copies = weighted_mean([(w, {"w": row.clone()}) for w, row in zip(weights, stacked, strict=True)])
    assert torch.allclose(in_place["w"], copies["w"], atol=1e-6)
    assert in_place["w"].data_ptr() != stacked.data_ptr()
    assert torch.equal(stacked_rows([s["w"] for s in _rows_states(stacked)]), stacked)
