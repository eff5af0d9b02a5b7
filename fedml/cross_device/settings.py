"""``train_args`` keys of cross-device aggregation (``sync`` rounds or asynchronous FedBuff) and checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from fedml.config.sections import ComponentSettings

AggregationMode = Literal["sync", "async"]
"""``sync``: rounds with a barrier (over-selection, first reports); ``async``: FedBuff."""

StalenessWeight = Literal["polynomial", "constant"]
"""How an update of staleness ``s`` is weighted: ``1 / sqrt(1 + s)``, or ``1``."""


class FedBuffSettings(ComponentSettings):
    """How a cross-device server aggregates: synchronous rounds, or FedBuff (Nguyen et al. 2022).

    Attributes
    ----------
    aggregation_mode
        ``sync`` (default) or ``async``.
    buffer_size
        FedBuff's ``K``: the server aggregates every ``K`` reports; unset: ``client_num_per_round``.
    max_concurrency
        Devices training at once; unset: ``ceil(over_selection * client_num_per_round)``.
    staleness_weight
        ``polynomial``: an update that started ``s`` aggregations ago weighs ``1 / sqrt(1 + s)``;
        ``constant``: 1.
    max_staleness
        Updates that started more than this many aggregations ago are dropped.

    """

    section = "train_args"
    aggregation_mode: AggregationMode = "sync"
    buffer_size: int | None = Field(None, ge=1)
    max_concurrency: int | None = Field(None, ge=1)
    staleness_weight: StalenessWeight = "polynomial"
    max_staleness: int = Field(10, ge=0)

    @classmethod
    def cross_check(cls, sections: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Refuse ``async`` outside cross-device, with secure aggregation, or with per-client state."""
        train = sections["train_args"]
        if train.aggregation_mode != "async":
            return []
        problems = []
        training_type = sections["common_args"].training_type
        if training_type != "cross_device":
            problems.append(
                (
                    "train_args.aggregation_mode",
                    f"async (FedBuff) runs with common_args.training_type cross_device, not {training_type}",
                )
            )
        secagg = sections.get("secure_aggregation_args")
        if secagg is not None and getattr(secagg, "enable_secure_aggregation", False):
            problems.append(
                (
                    "train_args.aggregation_mode",
                    "async (FedBuff) rebases each update onto the current model, which "
                    "secure_aggregation_args.enable_secure_aggregation hides from the server; use sync",
                )
            )
        if _keeps_client_state(train.federated_optimizer):
            problems.append(
                (
                    "train_args.aggregation_mode",
                    f"async (FedBuff) cannot serve train_args.federated_optimizer "
                    f"{train.federated_optimizer}, which keeps state per client",
                )
            )
        return problems


def _keeps_client_state(optimizer: str) -> bool:
    from fedml.core.algorithms import ALGORITHMS

    if optimizer not in ALGORITHMS:
        return False
    return bool(getattr(ALGORITHMS.get(optimizer), "keeps_client_state", False))


def staleness_weight(rule: StalenessWeight, staleness: int) -> float:
    """Return the weight of an update ``staleness`` aggregations old under ``rule``.

    Examples
    --------
    >>> staleness_weight("polynomial", 0), staleness_weight("polynomial", 3), staleness_weight("constant", 3)
    (1.0, 0.5, 1.0)

    """
    return 1.0 if rule == "constant" else (1.0 + staleness) ** -0.5


class EdgeSettings(ComponentSettings):
    """The ``comm_args`` an edge configuration may add (``fedml devices credentials`` writes them).

    Attributes
    ----------
    device_id
        Which device this is, when the command line gives no ``--device_id``.
    broker_password_file
        A file holding the device's broker password (read by ``fedml.init_edge``), instead of
        ``broker_password`` in the YAML.

    """

    section = "comm_args"
    device_id: int | None = Field(None, ge=1)
    broker_password_file: str | None = None
