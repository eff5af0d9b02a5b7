"""``secure_aggregation_args``: the keys of secure aggregation and the checks a round's size needs.

Thresholds count the *holders* of a client's shares: every client of the round for ``secagg``, the
client and its ``k`` neighbours for ``secagg_plus``. The threshold must be more than half of them (and
at most all of them): with a majority threshold the two sets of shares a server could ask for (self-mask
shares of survivors, key shares of dropouts) can never both reach the threshold for one client, even
when the server lies about who dropped. A smaller threshold is refused, not allowed by a flag: secure
aggregation fails closed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedml.config.sections import ComponentSettings
from fedml.core.privacy.secagg.field import check_capacity
from fedml.core.privacy.secagg.graph import default_neighbours, regular_degree
from fedml.errors import SecAggError

SecAggMethod = Literal["secagg", "secagg_plus"]
"""``secagg``: Bonawitz et al. (CCS 2017); ``secagg_plus``: Bell et al. (CCS 2020)."""


class SecAggArgs(ComponentSettings):
    """``secure_aggregation_args``: the server learns only the weighted sum of the clients' updates.

    Attributes
    ----------
    enable_secure_aggregation
        Turn secure aggregation on.
    sa_method
        ``secagg`` (every client shares with every other) or ``secagg_plus`` (only with its
        ``sa_neighbours`` neighbours in a random regular graph: cost grows with ``log n``).
    sa_threshold
        How many holders' shares recover a client's secrets; unset: more than half of the holders
        (``holders // 2 + 1``). Must exceed half of them.
    sa_clip_range
        Update coordinates are clipped to ``[-sa_clip_range, sa_clip_range]`` before quantization.
    sa_bit_width
        Bits of one unweighted coordinate: the quantization step is
        ``sa_clip_range / (2**(sa_bit_width - 1) - 1)``.
    sa_neighbours
        ``k`` for ``secagg_plus``; unset: ``2 * ceil(log2 n) + 1``, at most ``n - 1``.
    sa_max_weight
        The largest weight a client may send (its sample count, say); sizes the ring against overflow.

    """

    section = "secure_aggregation_args"
    enable_secure_aggregation: bool = False
    sa_method: SecAggMethod = "secagg"
    sa_threshold: int | None = Field(None, ge=2)
    sa_clip_range: float = Field(16.0, gt=0, allow_inf_nan=False)
    sa_bit_width: int = Field(24, ge=2, le=48)
    sa_neighbours: int | None = Field(None, ge=2)
    sa_max_weight: float = Field(float(1 << 24), gt=0, le=float(1 << 40), allow_inf_nan=False)

    def degree(self, clients: int) -> int:
        """Return how many neighbours each of ``clients`` clients has (``clients - 1`` for ``secagg``)."""
        if self.sa_method == "secagg":
            return clients - 1
        return regular_degree(clients, self.sa_neighbours or default_neighbours(clients))

    def threshold(self, clients: int) -> int:
        """Return the threshold of a round of ``clients`` clients, checking that it can hold.

        Raises
        ------
        SecAggError
            If there are fewer than two clients, the threshold is not more than half of a client's
            holders or exceeds them, or the sum could overflow the ring.

        Examples
        --------
        >>> SecAggArgs().threshold(10)
        6
        >>> SecAggArgs(sa_method="secagg_plus").threshold(100)
        9

        """
        if clients < 2:
            raise SecAggError(
                f"secure aggregation needs at least two clients in a round, got {clients}: the sum of "
                "one client is its update"
            )
        check_capacity(clients, self.sa_bit_width, self.sa_max_weight)
        holders = self.degree(clients) + 1
        threshold = holders // 2 + 1 if self.sa_threshold is None else self.sa_threshold
        if not holders // 2 < threshold <= holders:
            raise SecAggError(
                f"secure aggregation: sa_threshold={threshold} must be more than half of and at most "
                f"the {holders} holders of each client's shares ({self.sa_method}, {clients} clients)"
            )
        return threshold
