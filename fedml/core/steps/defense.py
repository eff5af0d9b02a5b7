"""The robust-aggregation server step: ``defense_args`` as a chain of rules.

``defense_type`` names one rule or a list applied in order (``[norm_diff_clipping, trimmed_mean]``).
Every rule but the last selects or transforms the round's updates here, before the algorithm's server
rule; the last one replaces the weighted mean inside the aggregator (``create_aggregation_rule``), so it
combines with FedAvg, FedProx and FedOpt, and stateful algorithms still see each surviving update.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings
from fedml.core.algorithms.base import RoundContext, Update
from fedml.core.robust import (
    aggregation_rule_names,
    chain_preconditions,
    chain_problems,
    create_selection_rules,
    defense_chain,
)
from fedml.core.steps import ServerStep


class DefenseArgs(ComponentSettings):
    """``defense_args``: Byzantine-robust aggregation in place of the weighted mean.

    ``defense_type`` names one rule or a list applied in order (``[norm_diff_clipping, trimmed_mean]``).
    """

    section = "defense_args"
    enable_defense: bool = False
    defense_type: str | list[str] | None = None
    byzantine_client_num: int = Field(0, ge=0)
    krum_param_m: int = Field(1, ge=1)
    trim_param_b: float = Field(0.1, ge=0, lt=0.5)
    norm_bound: float = Field(5.0, gt=0)

    @classmethod
    def cross_check(cls, sections: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check that an enabled defense names its rules, and that only the last one aggregates."""
        defense = sections["defense_args"]
        key = "defense_args.defense_type"
        if defense.defense_type is None:
            if defense.enable_defense:
                valid = ", ".join(aggregation_rule_names())
                return [(key, f"enable_defense is true but no type is set; valid: {valid}")]
            return []
        chain = [defense.defense_type] if isinstance(defense.defense_type, str) else defense.defense_type
        if not chain:
            return [(key, "the list of rules is empty")]
        problems = chain_problems(chain)
        if not problems and defense.enable_defense:
            problems = chain_preconditions(chain, defense, sections["train_args"].client_num_per_round)
        return [(key, problem) for problem in problems]


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
