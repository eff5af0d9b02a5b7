"""The neighbour graph of SecAgg+ (Bell et al., CCS 2020): a seeded random k-regular graph of clients.

The graph is the Harary graph ``H(k, n)`` with its vertices labelled by a random permutation of the
clients: vertex ``p`` of a cycle of ``n`` is joined to ``p +- 1 .. p +- k // 2`` and, for odd ``k``, to the
opposite vertex ``p + n / 2``. It has exactly ``k`` neighbours per client and is ``k``-connected, so no
small set of dropouts cuts a client off, and the random labelling makes who neighbours whom
unpredictable before the round. A ``k``-regular graph on ``n`` vertices needs ``k * n`` even: for odd
``k`` and odd ``n`` the graph uses ``k + 1``. With ``k >= n - 1`` every client neighbours every other,
which is plain SecAgg.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedml.errors import SecAggError


def default_neighbours(clients: int) -> int:
    """Return the default ``sa_neighbours`` for ``clients``: ``2 * ceil(log2 n) + 1``, at most ``n - 1``.

    Examples
    --------
    >>> default_neighbours(100), default_neighbours(5)
    (15, 4)

    """
    return max(1, min(clients - 1, 2 * math.ceil(math.log2(max(clients, 2))) + 1))


def regular_degree(clients: int, neighbours: int) -> int:
    """Return the degree the graph of ``clients`` gets for ``sa_neighbours = neighbours``."""
    if neighbours >= clients - 1:
        return clients - 1
    if neighbours % 2 and clients % 2:
        return min(neighbours + 1, clients - 1)
    return neighbours


def neighbour_graph(
    client_ids: Sequence[str], neighbours: int, rng: np.random.Generator
) -> dict[str, tuple[str, ...]]:
    """Return each client's neighbours (sorted) in a random ``regular_degree``-regular graph.

    Raises
    ------
    SecAggError
        If there are fewer than two clients, the ids repeat, or ``neighbours < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> graph = neighbour_graph([str(i) for i in range(10)], 4, np.random.default_rng(0))
    >>> sorted({len(peers) for peers in graph.values()})
    [4]
    >>> all(c in graph[p] for c, peers in graph.items() for p in peers)
    True

    """
    n = len(client_ids)
    if n < 2 or len(set(client_ids)) != n:
        raise SecAggError(
            f"secure aggregation needs at least two distinct clients, got {list(client_ids)[:5]}"
        )
    if neighbours < 1:
        raise SecAggError(f"secure aggregation: sa_neighbours must be at least 1, got {neighbours}")
    k = regular_degree(n, neighbours)
    order = [client_ids[i] for i in rng.permutation(n)]
    offsets = set(range(1, k // 2 + 1)) | {n - d for d in range(1, k // 2 + 1)}
    if k % 2:
        offsets.add(n // 2)
    return {order[p]: tuple(sorted(order[(p + offset) % n] for offset in offsets)) for p in range(n)}
