"""Topologies as data: a graph over the clients and its mixing matrix, the same on every backend.

A topology is an adjacency matrix (symmetric, no self-loops) and the Metropolis-Hastings mixing matrix
built from it: ``W[i, j] = 1 / (1 + max(deg i, deg j))`` for neighbours, the rest of each row on the
diagonal. ``W`` is symmetric and doubly stochastic, so repeated gossip ``x <- W x`` converges to the
average, at a rate set by the spectral gap ``1 - |lambda_2|``. Random graphs are drawn from a seeded
``numpy`` generator, so every process builds the same one.

Examples
--------
>>> graph = ring(4)
>>> graph.sum(axis=1).tolist()
[2, 2, 2, 2]
>>> w = mixing_matrix(graph)
>>> bool(np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1))
True
>>> round(spectral_gap(mixing_matrix(fully_connected(5))), 6)
1.0

"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fedml.errors import ConfigError

Graph = np.ndarray
"""A symmetric 0/1 adjacency matrix of shape ``(n, n)`` with a zero diagonal."""


def star(n: int) -> Graph:
    """Return the star: node 0 (the server's place) joined to every other node."""
    _check_size(n, 2)
    graph = np.zeros((n, n), dtype=np.int64)
    graph[0, 1:] = graph[1:, 0] = 1
    return graph


def ring(n: int) -> Graph:
    """Return the ring: node ``i`` joined to ``i - 1`` and ``i + 1`` (mod ``n``)."""
    _check_size(n, 3)
    graph = np.zeros((n, n), dtype=np.int64)
    for i in range(n):
        graph[i, (i + 1) % n] = graph[(i + 1) % n, i] = 1
    return graph


def torus(n: int) -> Graph:
    """Return the 2-D torus on a ``rows x cols`` grid with ``rows * cols == n`` as square as possible.

    Raises
    ------
    ConfigError
        If ``n`` has no factorization with both sides at least 3 (a torus needs a ring each way).

    """
    rows = max((r for r in range(3, math.isqrt(n) + 1) if n % r == 0), default=None)
    if rows is None or n // rows < 3:
        raise ConfigError(
            f"topology_args.graph torus: {n} nodes do not form a grid of at least 3 x 3; use a count "
            "such as 9, 12, 16 or 32"
        )
    cols = n // rows
    graph = np.zeros((n, n), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for j in (r * cols + (c + 1) % cols, ((r + 1) % rows) * cols + c):
                graph[i, j] = graph[j, i] = 1
    return graph


def fully_connected(n: int) -> Graph:
    """Return the complete graph."""
    _check_size(n, 2)
    return np.ones((n, n), dtype=np.int64) - np.eye(n, dtype=np.int64)


def random_regular(n: int, degree: int, seed: int) -> Graph:
    """Return a connected random ``degree``-regular graph (seeded).

    Starts from the circulant graph (``i`` joined to ``i +- 1 .. degree // 2``, and to ``i + n / 2``
    for an odd degree) and randomizes it by degree-preserving double-edge swaps that keep it simple,
    until it is connected: unlike rejection of the pairing model, this always ends quickly.

    Raises
    ------
    ConfigError
        If no connected such graph exists (``degree >= n``, ``n * degree`` odd, or degree 1 on more
        than 2 nodes).

    """
    _check_size(n, 2)
    if not 1 <= degree < n or (n * degree) % 2 or (degree == 1 and n > 2):
        raise ConfigError(
            f"topology_args.degree {degree}: no connected {degree}-regular graph on {n} nodes (needs "
            "2 <= degree < n and n * degree even)"
        )
    graph = np.zeros((n, n), dtype=np.int64)
    offsets = [*range(1, degree // 2 + 1), *([n // 2] if degree % 2 else [])]
    for i in range(n):
        for offset in offsets:
            graph[i, (i + offset) % n] = graph[(i + offset) % n, i] = 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x70_9010]))
    edges = [tuple(e) for e in np.argwhere(np.triu(graph))]
    for _ in range(100):
        for _ in range(10 * len(edges)):
            first, second = rng.choice(len(edges), size=2, replace=False)
            (a, b), (c, d) = edges[first], edges[second]
            if rng.random() < 0.5:
                c, d = d, c
            if len({a, b, c, d}) < 4 or graph[a, d] or graph[c, b]:
                continue
            graph[a, b] = graph[b, a] = graph[c, d] = graph[d, c] = 0
            graph[a, d] = graph[d, a] = graph[c, b] = graph[b, c] = 1
            edges[first], edges[second] = (a, d), (c, b)
        if is_connected(graph):
            return graph
    raise ConfigError(
        f"topology_args.degree {degree}: no connected {degree}-regular graph on {n} nodes found"
    )


def erdos_renyi(n: int, probability: float, seed: int) -> Graph:
    """Return a connected Erdos-Renyi graph ``G(n, p)`` (seeded; redrawn until connected).

    Raises
    ------
    ConfigError
        If ``probability`` is outside ``(0, 1]`` or no connected graph turns up in 1,000 draws.

    """
    _check_size(n, 2)
    if not 0 < probability <= 1:
        raise ConfigError(f"topology_args.probability {probability}: must be in (0, 1]")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xE2D05]))
    for _ in range(1000):
        upper = np.triu(rng.random((n, n)) < probability, k=1).astype(np.int64)
        graph = upper + upper.T
        if is_connected(graph):
            return graph
    raise ConfigError(
        f"topology_args.probability {probability}: no connected graph on {n} nodes in 1,000 draws; raise it"
    )


def from_adjacency(adjacency: list[list[int]]) -> Graph:
    """Return a user-given adjacency matrix, checked.

    Raises
    ------
    ConfigError
        If it is not square, not 0/1, not symmetric, has self-loops or is not connected.

    """
    graph = np.asarray(adjacency, dtype=np.int64)
    key = "topology_args.adjacency"
    if graph.ndim != 2 or graph.shape[0] != graph.shape[1]:
        raise ConfigError(f"{key}: must be a square matrix, got shape {graph.shape}")
    if not np.isin(graph, (0, 1)).all():
        raise ConfigError(f"{key}: entries must be 0 or 1")
    if not np.array_equal(graph, graph.T):
        raise ConfigError(f"{key}: must be symmetric (an edge i-j is an edge j-i)")
    if np.any(np.diag(graph)):
        raise ConfigError(f"{key}: the diagonal must be 0 (no self-loops)")
    if not is_connected(graph):
        raise ConfigError(f"{key}: the graph is not connected, so gossip cannot reach an average")
    return graph


def is_connected(graph: Graph) -> bool:
    """Return whether every node is reachable from node 0."""
    n = graph.shape[0]
    seen, frontier = {0}, [0]
    while frontier:
        node = frontier.pop()
        for other in np.flatnonzero(graph[node]):
            if int(other) not in seen:
                seen.add(int(other))
                frontier.append(int(other))
    return len(seen) == n


def mixing_matrix(graph: Graph) -> np.ndarray:
    """Return the Metropolis-Hastings weights of ``graph``: symmetric and doubly stochastic (float64)."""
    degree = graph.sum(axis=1)
    n = graph.shape[0]
    weights = np.zeros((n, n), dtype=np.float64)
    rows, cols = np.nonzero(graph)
    weights[rows, cols] = 1.0 / (1.0 + np.maximum(degree[rows], degree[cols]))
    weights[np.arange(n), np.arange(n)] = 1.0 - weights.sum(axis=1)
    return weights


def spectral_gap(weights: np.ndarray) -> float:
    """Return ``1 - |lambda_2|``: how fast gossip with ``weights`` contracts towards the average."""
    eigenvalues = np.sort(np.abs(np.linalg.eigvalsh(weights)))[::-1]
    return float(1.0 - eigenvalues[1]) if len(eigenvalues) > 1 else 1.0


GRAPHS: dict[str, Callable[..., Graph]] = {
    "star": lambda n, degree, probability, seed: star(n),
    "ring": lambda n, degree, probability, seed: ring(n),
    "torus": lambda n, degree, probability, seed: torus(n),
    "full": lambda n, degree, probability, seed: fully_connected(n),
    "random_regular": lambda n, degree, probability, seed: random_regular(n, degree, seed),
    "erdos_renyi": lambda n, degree, probability, seed: erdos_renyi(n, probability, seed),
}
"""``topology_args.graph`` names -> ``build(n, degree, probability, seed)``."""


def build_graph(name: str, n: int, degree: int = 4, probability: float = 0.3, seed: int = 0) -> Graph:
    """Return the graph ``name`` on ``n`` nodes.

    Raises
    ------
    ConfigError
        For an unknown name (listing the valid ones) or parameters the graph cannot have.

    """
    if name not in GRAPHS:
        raise ConfigError(f"topology_args.graph: unknown graph {name!r}; valid: {', '.join(GRAPHS)}")
    return GRAPHS[name](n, degree, probability, seed)


def round_graph(
    name: str,
    n: int,
    *,
    degree: int = 4,
    probability: float = 0.3,
    adjacency: list[list[int]] | None = None,
    seed: int = 0,
    round_idx: int = 0,
    time_varying: bool = False,
) -> Graph:
    """Return the graph of round ``round_idx`` of a run: its ``topology_args`` graph on ``n`` nodes.

    ``name`` is a ``GRAPHS`` name or ``"adjacency"`` (the user's ``adjacency`` matrix). A static graph
    is drawn once from ``seed`` (the same for every round); with ``time_varying`` each round draws a new
    one from ``(seed, round_idx)``, so every process builds the same sequence.

    Raises
    ------
    ConfigError
        For an unknown name, an adjacency matrix that is not a connected graph on ``n`` nodes, or
        parameters the graph cannot have.

    Examples
    --------
    >>> a = round_graph("random_regular", 8, degree=3, seed=1, round_idx=0, time_varying=True)
    >>> b = round_graph("random_regular", 8, degree=3, seed=1, round_idx=1, time_varying=True)
    >>> bool((a.sum(axis=1) == 3).all()), bool(np.array_equal(a, b))
    (True, False)

    """
    if name == "adjacency":
        graph = from_adjacency(adjacency if adjacency is not None else [])
        if len(graph) != n:
            raise ConfigError(f"topology_args.adjacency: a {len(graph)}-node graph for {n} clients")
        return graph
    if time_varying:
        seed = int(np.random.SeedSequence([seed, round_idx]).generate_state(1)[0])
    return build_graph(name, n, degree, probability, seed)


def _check_size(n: int, least: int) -> None:
    if n < least:
        raise ConfigError(f"a topology of {n} nodes; this graph needs at least {least}")
