import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedml.core.topology import (
    GRAPHS,
    build_graph,
    from_adjacency,
    is_connected,
    mixing_matrix,
    random_regular,
    round_graph,
    spectral_gap,
    torus,
)
from fedml.errors import ConfigError

SIZES = {"star": 7, "ring": 8, "torus": 16, "full": 6, "random_regular": 12, "erdos_renyi": 10}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_every_graph_is_a_symmetric_connected_simple_graph_with_a_doubly_stochastic_mixing(name):
    graph = build_graph(name, SIZES[name], degree=3, probability=0.4, seed=1)
    assert np.array_equal(graph, graph.T)
    assert not np.diag(graph).any()
    assert set(np.unique(graph)) <= {0, 1}
    assert is_connected(graph)
    weights = mixing_matrix(graph)
    assert np.allclose(weights, weights.T)
    assert np.allclose(weights.sum(axis=0), 1)
    assert np.allclose(weights.sum(axis=1), 1)
    assert (weights >= 0).all()
    assert (weights[(graph == 0) & ~np.eye(len(graph), dtype=bool)] == 0).all()
    assert 0 < spectral_gap(weights) <= 1


@settings(max_examples=200, deadline=None)
@given(st.integers(4, 40), st.integers(1, 7), st.integers(0, 10_000))
def test_random_regular_graphs_are_regular_connected_and_seeded(n, degree, seed):
    if degree >= n or (n * degree) % 2 or degree == 1:
        with pytest.raises(ConfigError, match=r"no connected \d+-regular graph"):
            random_regular(n, degree, seed)
        return
    graph = random_regular(n, degree, seed)
    assert (graph.sum(axis=1) == degree).all()
    assert np.array_equal(graph, graph.T)
    assert not np.diag(graph).any()
    assert is_connected(graph)
    assert np.array_equal(graph, random_regular(n, degree, seed))


def test_the_gap_grows_with_connectivity_and_gossip_contracts_as_it_predicts():
    ring_gap = spectral_gap(mixing_matrix(build_graph("ring", 16)))
    torus_gap = spectral_gap(mixing_matrix(build_graph("torus", 16)))
    full_gap = spectral_gap(mixing_matrix(build_graph("full", 16)))
    assert ring_gap < torus_gap < full_gap
    weights = mixing_matrix(build_graph("ring", 16))
    x = np.random.default_rng(0).normal(size=16)
    deviation = x - x.mean()
    for _ in range(20):
        after = weights @ deviation
        assert np.linalg.norm(after) <= (1 - ring_gap) * np.linalg.norm(deviation) + 1e-12
        deviation = after


def test_a_torus_is_a_grid_of_rings():
    graph = torus(12)
    assert (graph.sum(axis=1) == 4).all()
    with pytest.raises(ConfigError, match="do not form a grid"):
        torus(10)


@pytest.mark.parametrize(
    ("adjacency", "problem"),
    [
        ([[0, 1], [0, 0]], "symmetric"),
        ([[1, 1], [1, 0]], "diagonal"),
        ([[0, 2], [2, 0]], "0 or 1"),
        ([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]], "not connected"),
        ([[0, 1, 0]], "square"),
    ],
)
def test_a_bad_user_adjacency_is_refused_naming_the_problem(adjacency, problem):
    with pytest.raises(ConfigError, match=problem):
        from_adjacency(adjacency)


def test_an_unknown_graph_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: star, ring, torus"):
        build_graph("hypercube", 8)


def test_a_time_varying_graph_is_new_each_round_and_the_same_for_the_same_seed_and_round():
    def draw(round_idx, seed=3, time_varying=True):
        return round_graph(
            "random_regular", 10, degree=3, seed=seed, round_idx=round_idx, time_varying=time_varying
        )

    graphs = [draw(r) for r in range(4)]
    assert all((g.sum(axis=1) == 3).all() and is_connected(g) for g in graphs)
    assert len({g.tobytes() for g in graphs}) == 4
    assert np.array_equal(draw(2), graphs[2])
    assert not np.array_equal(draw(2, seed=4), graphs[2])
    assert np.array_equal(draw(0, time_varying=False), draw(5, time_varying=False))


def test_a_user_adjacency_is_the_round_graph_when_it_has_one_node_per_client():
    adjacency = build_graph("ring", 5).tolist()
    assert round_graph("adjacency", 5, adjacency=adjacency).tolist() == adjacency
    with pytest.raises(ConfigError, match="a 5-node graph for 6 clients"):
        round_graph("adjacency", 6, adjacency=adjacency)
