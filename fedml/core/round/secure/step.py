"""The secure-aggregation step (its checks) and what a client masks and the server rebuilds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedml.config.sections import read_settings
from fedml.core.algorithms import Algorithm, SummedUpdate, Update
from fedml.core.comm import MessageKind
from fedml.core.privacy.dp import clipped, delta_of
from fedml.core.privacy.secagg import STAGES, SecAggArgs
from fedml.core.privacy.secagg.state import flatten_state, unflatten
from fedml.core.privacy.steps import CentralDP
from fedml.core.round.remote import Stage
from fedml.core.steps import ServerStep, Steps
from fedml.errors import SecAggError

SECURE_STAGES = {
    name: Stage(name, MessageKind.SECURE_AGGREGATION, MessageKind.SECURE_AGGREGATION) for name in STAGES
}
"""The protocol's four stages as round stages, by protocol stage name."""


def secagg_settings(args: Any) -> SecAggArgs | None:
    """Return the run's ``secure_aggregation_args`` when they enable secure aggregation, else ``None``."""
    settings: SecAggArgs = read_settings(args, SecAggArgs)
    return settings if settings.enable_secure_aggregation else None


class SecureAggregation(ServerStep):
    """The server step of secure aggregation: it only checks, at start, that the run can hold.

    Unmasking happens in the backend (the server never holds an individual update to pass through a
    step); this step refuses what needs one, with ``SecAggError`` naming both.

    Parameters
    ----------
    settings
        ``secure_aggregation_args``.
    defense
        The robust rules of the run (``defense_args``).
    adaptive_cdp
        True when central DP adapts its clip bound (it counts unclipped deltas per client).
    dpsgd
        True when clients train with DP-SGD (accounted from each client's own report).

    """

    name = "secure aggregation"
    needs_individual_updates = False

    def __init__(
        self,
        settings: SecAggArgs,
        defense: Sequence[str] = (),
        adaptive_cdp: bool = False,
        dpsgd: bool = False,
    ) -> None:
        self.settings = settings
        self.defense = list(defense)
        self.adaptive_cdp = adaptive_cdp
        self.dpsgd = dpsgd

    def describe(self) -> str:
        """Return the method and its parameters, for the log."""
        s = self.settings
        return (
            f"Secure aggregation ({s.sa_method}): the server learns only the weighted sum of the clients' "
            f"deltas, clipped to +-{s.sa_clip_range:g} and quantized to {s.sa_bit_width} bits"
        )

    def check(self, algorithm: Algorithm, backend: str, engine: str | None, presummed: bool) -> None:
        """Refuse NCCL, algorithms that need each update, robust rules, adaptive clipping and DP-SGD.

        Raises
        ------
        SecAggError
            Naming secure aggregation and what it cannot work with.

        """
        why = "secure_aggregation_args.enable_secure_aggregation: the server sees only the sum of the updates"
        if backend == "NCCL":
            raise SecAggError(
                f"{why}; comm_args.backend NCCL all-reduces them in the clear on every rank; use sp, MPI, "
                "GRPC or MQTT"
            )
        if not algorithm.accepts_presummed_updates:
            raise SecAggError(
                f"{why}, which train_args.federated_optimizer {algorithm.name} cannot use (it needs every "
                "client's update); use FedAvg, FedProx or FedOpt"
            )
        if self.defense:
            raise SecAggError(
                f"{why}, which defense_args.defense_type {self.defense[0]} cannot filter (it needs every "
                "client's update); turn the defense off or secure aggregation off"
            )
        if self.adaptive_cdp:
            raise SecAggError(
                f"{why}, so dp_args.adaptive_clipping cannot count the unclipped deltas; use a fixed "
                "dp_args.clipping_norm"
            )
        if self.dpsgd:
            raise SecAggError(
                f"{why}, so dp_args.dp_solution_type dpsgd cannot be accounted from each client's report; "
                "use ldp or cdp"
            )


def secure_aggregation_step(args: Any) -> SecureAggregation | None:
    """Return the step when ``secure_aggregation_args`` enables it, else ``None``."""
    from fedml.core.privacy.settings import DPArgs
    from fedml.core.robust import defense_chain

    settings = secagg_settings(args)
    if settings is None:
        return None
    dp = read_settings(args, DPArgs)
    mode = dp.dp_solution_type if dp.enable_dp else None
    adaptive = bool(mode == "cdp" and dp.adaptive_clipping)
    return SecureAggregation(settings, defense_chain(args.defense_args), adaptive, mode == "dpsgd")


def client_input(
    update: Update, global_state: Mapping[str, torch.Tensor], central_clip: float | None = None
) -> tuple[torch.Tensor, float]:
    """Return what a client masks: its flat delta with its ``train_loss`` appended, and its weight.

    With central DP (``central_clip``) the delta is first clipped to that L2 norm and the weight is 1:
    DP-FedAvg's equal-weight mean of clipped deltas, clipped where the client is, before masking.
    """
    state, weight = update.state, update.weight
    if central_clip is not None:
        state, _ = clipped(state, dict(global_state), central_clip)
        weight = 1.0
    delta = delta_of(state, dict(global_state))
    # In the global state's order: the server rebuilds the mean from the global state's layout.
    vector, _ = flatten_state({k: delta[k] for k in global_state if k in delta})
    loss = torch.tensor([float(update.metrics.get("train_loss", 0.0))], dtype=torch.float32)
    return torch.cat([vector, loss]), weight


def summed_update(
    total: torch.Tensor, weight: float, clients: int, global_state: Mapping[str, torch.Tensor]
) -> SummedUpdate:
    """Return the ``SummedUpdate`` of an unmasked sum of ``client_input`` vectors and their total weight.

    Raises
    ------
    SecAggError
        If the total weight is not positive.

    """
    if weight <= 0:
        raise SecAggError(f"secure aggregation: the unmasked total weight is {weight}, not positive")
    floats = {k: t for k, t in global_state.items() if t.dtype.is_floating_point}
    _, spec = flatten_state(floats)
    mean = (total / weight).to(torch.float64)
    delta = unflatten(mean[:-1], spec)
    state = {
        k: (t + delta[k].to(t.device, t.dtype)) if k in delta else t.clone() for k, t in global_state.items()
    }
    return SummedUpdate(clients, weight, state, {"train_loss": float(mean[-1])})


def central_dp(steps: Steps) -> CentralDP | None:
    """Return the run's central-DP server step, if it has one (it noises the unmasked mean)."""
    return next((s for s in steps.server if isinstance(s, CentralDP)), None)


def noised(summed: SummedUpdate, central: CentralDP | None, round_idx: int) -> SummedUpdate:
    """Return ``summed`` with central DP's noise on its mean, or unchanged without central DP."""
    if central is None:
        return summed
    return central.noise_presummed(summed, round_idx)
