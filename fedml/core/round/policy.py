"""Participation policies: when a stage of a round is complete, as data rather than code in the loop.

A policy answers three questions about a stage that needs ``wanted`` client results: how many clients
to select, after how many replies to stop waiting, and how many replies are enough when its deadline
passes. Counts are in clients (an MPI worker that trains three clients brings three).

- ``AllReplies``: every selected client, or the run fails at the deadline (MPI simulation).
- ``Quorum``: every selected client if they answer in time, else at least ``min_replies`` (cross-silo).
- ``FirstReplies``: select more than needed and go on with the first ``wanted`` (cross-device).

Examples
--------
>>> policy = FirstReplies(timeout=60.0, over_selection=0.3)
>>> policy.selection_size(10), policy.target(10, 13), policy.required(10, 13)
(13, 10, 10)

"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class ParticipationPolicy(Protocol):
    """Decides when a stage is complete."""

    @property
    def timeout(self) -> float:
        """Each stage's deadline, in seconds."""
        ...

    def selection_size(self, wanted: int) -> int:
        """Return how many clients to select for a stage that needs ``wanted`` results."""
        ...

    def target(self, wanted: int, selected: int) -> int:
        """Return the number of replies after which the stage is complete at once."""
        ...

    def required(self, wanted: int, selected: int) -> int:
        """Return the number of replies that is enough when the deadline passes (fewer: the round fails)."""
        ...


@dataclass(frozen=True)
class AllReplies:
    """Every selected client must reply within ``timeout`` seconds."""

    timeout: float

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted``."""
        return wanted

    def target(self, wanted: int, selected: int) -> int:
        """Return ``selected``: wait for everyone."""
        return selected

    def required(self, wanted: int, selected: int) -> int:
        """Return ``selected``: a missing reply fails the round."""
        return selected


@dataclass(frozen=True)
class Quorum:
    """Wait up to ``timeout`` seconds for every selected client; then go on with at least ``min_replies``."""

    timeout: float
    min_replies: int

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted``."""
        return wanted

    def target(self, wanted: int, selected: int) -> int:
        """Return ``selected``: stop early only when everyone replied."""
        return selected

    def required(self, wanted: int, selected: int) -> int:
        """Return ``min_replies`` (at most ``selected``)."""
        return min(self.min_replies, selected)


@dataclass(frozen=True)
class FirstReplies:
    """Select ``ceil(wanted * (1 + over_selection))`` clients and go on with the first ``wanted`` replies.

    At the deadline, ``min_replies`` (default ``wanted``) replies are enough.
    """

    timeout: float
    over_selection: float = 0.3
    min_replies: int | None = None

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted`` plus the over-selection, rounded up."""
        return math.ceil(wanted * (1 + self.over_selection))

    def target(self, wanted: int, selected: int) -> int:
        """Return ``wanted`` (at most ``selected``): the first reports complete the stage."""
        return min(wanted, selected)

    def required(self, wanted: int, selected: int) -> int:
        """Return ``min_replies`` or ``wanted`` (at most ``selected``)."""
        return min(self.min_replies if self.min_replies is not None else wanted, selected)
