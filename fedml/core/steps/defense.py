"""The robust-aggregation server step: ``defense_args`` as a chain of rules.

``defense_type`` names one rule or a list applied in order (``[norm_diff_clipping, trimmed_mean]``).
Every rule but the last selects or transforms the round's updates here, before the algorithm's server
rule; the last one replaces the weighted mean inside the aggregator (``create_aggregation_rule``), so it
combines with FedAvg, FedProx and FedOpt, and stateful algorithms still see each surviving update.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedml.core.algorithms.base import RoundContext, Update
from fedml.core.robust import create_selection_rules, defense_chain
from fedml.core.steps import ServerStep


class DefenseStep(ServerStep):
    """Robust aggregation from ``defense_args``; needs every client's update.

    Parameters
    ----------
    args
        The run's arguments (``defense_args``).

    """

    name = "defense"
    needs_individual_updates = True

    def __init__(self, args: Any) -> None:
        self.chain = defense_chain(args.defense_args)
        self.selections = create_selection_rules(args)

    def describe(self) -> str:
        """Return the chain of rules, for the server's log."""
        return f"Robust aggregation: {' -> '.join(self.chain)}"

    def apply(
        self, updates: list[Update], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> list[Update]:
        """Run every rule but the last over the updates, in order; each keeps or changes some of them."""
        for _, select in self.selections:
            kept = select([(u.weight, u.state) for u in updates], global_state)
            updates = [dataclasses.replace(updates[i], state=state) for i, state in kept]
        return updates


def defense_step(args: Any) -> DefenseStep | None:
    """Return the defense step when ``defense_args`` enables a rule, else ``None``."""
    return DefenseStep(args) if defense_chain(args.defense_args) else None
