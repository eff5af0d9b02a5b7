import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedml.core import robust
from fedml.core.aggregation import weighted_mean
from fedml.errors import AggregationError


def states(n, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            float(torch.randint(1, 100, (1,), generator=gen)),
            {"w": scale * torch.randn(4, 3, generator=gen), "b": torch.randn(3, generator=gen)},
        )
        for _ in range(n)
    ]


RULES = {
    "median": robust.coordinate_median,
    "trimmed_mean": lambda u: robust.trimmed_mean(u, 0.2),
    "krum": lambda u: robust.krum(u, byzantine_num=1),
    "multikrum": lambda u: robust.krum(u, byzantine_num=1, select_num=3),
    "bulyan": lambda u: robust.bulyan(u, byzantine_num=1),
    "geometric_median": robust.geometric_median,
    "norm_diff_clipping": lambda u: robust.norm_diff_clipping(
        u, {k: torch.zeros_like(v) for k, v in u[0][1].items()}, 1.0
    ),
}


def close(a, b, tol=1e-5):
    return all(torch.allclose(a[k], b[k], atol=tol, rtol=tol) for k in a)


@pytest.mark.parametrize("name", sorted(RULES))
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(7, 10), rnd=st.randoms())
def test_order_does_not_matter(name, seed, n, rnd):
    pairs = states(n, seed)
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    assert close(RULES[name](pairs), RULES[name](shuffled), tol=1e-4)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "geometric_median"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_a_single_client_returns_itself(name, seed):
    pairs = states(1, seed)
    assert close(RULES[name](pairs), pairs[0][1])


def test_krum_with_no_byzantine_clients_and_one_update_returns_it():
    pairs = states(1, 0)
    assert close(robust.krum(pairs, byzantine_num=0), pairs[0][1])


def test_identical_honest_clients_come_back_unchanged():
    pairs = states(1, 3) * 7
    for name, rule in RULES.items():
        if name != "norm_diff_clipping":
            assert close(rule(pairs), pairs[0][1], tol=1e-4), name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("median", robust.coordinate_median),
        ("trimmed_mean", lambda u: robust.trimmed_mean(u, 0.3)),
        ("krum", lambda u: robust.krum(u, byzantine_num=3)),
        ("multikrum", lambda u: robust.krum(u, byzantine_num=3, select_num=4)),
    ],
)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), huge=st.floats(1e3, 1e8))
def test_byzantine_huge_values_stay_within_the_honest_range(name, rule, seed, huge):
    honest = states(7, seed)
    byzantine = [(1e6, {k: torch.full_like(v, huge) for k, v in honest[0][1].items()}) for _ in range(3)]
    result = rule(honest + byzantine)
    for key in result:
        stacked = torch.stack([s[key] for _, s in honest])
        assert (result[key] <= stacked.max(0).values + 1e-5).all(), name
        assert (result[key] >= stacked.min(0).values - 1e-5).all(), name
    assert not close(weighted_mean(honest + byzantine), result)


def test_geometric_median_resists_a_minority_of_outliers():
    honest = states(7, 1)
    byzantine = [(1.0, {k: torch.full_like(v, 1e6) for k, v in honest[0][1].items()}) for _ in range(3)]
    result = robust.geometric_median(honest + byzantine)
    assert all(result[k].abs().max() < 10 for k in result)


def test_norm_diff_clipping_bounds_each_update():
    origin = {"w": torch.zeros(2)}
    pairs = [(1.0, {"w": torch.tensor([30.0, 40.0])}), (1.0, {"w": torch.tensor([0.3, 0.4])})]
    result = robust.norm_diff_clipping(pairs, origin, norm_bound=5.0)
    assert torch.allclose(result["w"], torch.tensor([1.65, 2.2]))


def test_median_of_even_count_averages_the_middle_pair():
    pairs = [(1.0, {"w": torch.tensor([float(v)])}) for v in (1, 2, 10, 20)]
    assert robust.coordinate_median(pairs)["w"].item() == pytest.approx(6.0)


def test_integer_buffers_take_the_weighted_mean():
    pairs = [
        (1.0, {"w": torch.ones(2), "n": torch.tensor(2)}),
        (3.0, {"w": torch.ones(2), "n": torch.tensor(6)}),
    ]
    assert robust.coordinate_median(pairs)["n"].item() == 5


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda u: robust.krum(u[:6], byzantine_num=2),
            "Krum needs n >= 2f \\+ 3 updates: 6 updates, byzantine_client_num 2",
        ),
        (
            lambda u: robust.krum(u, byzantine_num=1, select_num=9),
            "krum_param_m must be between 1 and n - f = 7",
        ),
        (
            lambda u: robust.bulyan(u, byzantine_num=2),
            "Bulyan needs n >= 4f \\+ 3 updates: 8 updates, byzantine_client_num 2",
        ),
        (lambda u: robust.trimmed_mean(u, 0.5), "0 <= trim_param_b < 0.5"),
        (lambda u: robust.norm_diff_clipping(u, u[0][1], 0), "norm_bound > 0"),
        (lambda u: robust.coordinate_median([]), "no client updates"),
    ],
)
def test_preconditions_name_the_numbers(call, match):
    with pytest.raises(AggregationError, match=match):
        call(states(8, 0))


def one_dim(values):
    return [(1.0, {"w": torch.tensor([float(v)])}) for v in values]


@pytest.mark.parametrize(("values", "expected"), [([1, 2, 4, 10], 3.0), ([7, 1, 4], 4.0), ([5], 5.0)])
def test_median_of_rows_averages_the_middle_pair_for_even_counts(values, expected):
    assert robust.median_of_rows(torch.tensor([[float(v)] for v in values])).item() == expected
    assert robust.coordinate_median(one_dim(values))["w"].item() == expected


def test_bulyan_with_an_even_selection_centres_on_the_averaged_median():
    # n = 8, f = 1: Krum keeps the 6 updates 0..5 (100 and 200 are far); their median is 2.5 (the
    # lower middle value, torch.median's, would be 2); the n - 4f = 4 values nearest 2.5 are 1, 2, 3, 4.
    assert robust.bulyan(one_dim([0, 1, 2, 3, 4, 5, 100, 200]), byzantine_num=1)["w"].item() == 2.5


def test_bulyan_with_an_odd_selection_centres_on_the_middle_value():
    # n = 7, f = 1: Krum keeps 0..4, median 2, the 3 nearest are 1, 2, 3.
    assert robust.bulyan(one_dim([0, 1, 2, 3, 4, 100, 200]), byzantine_num=1)["w"].item() == 2.0


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 2).flatmap(
        lambda f: st.tuples(
            st.just(f),
            st.lists(
                st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3),
                min_size=4 * f + 3 - f,
                max_size=4 * f + 6 - f,
            ),
        )
    )
)
def test_bulyan_output_lies_in_the_range_of_the_honest_updates(case):
    f, honest = case
    attackers = [[1e6 * (i + 1)] * 3 for i in range(f)]
    updates = [(1.0, {"w": torch.tensor(row)}) for row in honest + attackers]
    result = robust.bulyan(updates, byzantine_num=f)["w"]
    low, high = torch.tensor(honest).min(dim=0).values, torch.tensor(honest).max(dim=0).values
    assert torch.all(result >= low - 1e-5)
    assert torch.all(result <= high + 1e-5)
