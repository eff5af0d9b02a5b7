"""``SecureLocalBackend``: sp with secure aggregation among in-process parties."""

from __future__ import annotations

from fedml.core.algorithms import SummedUpdate
from fedml.core.privacy.secagg import SecAggArgs, run_secagg_round
from fedml.core.round.backend import LocalBackend, RoundTask
from fedml.core.round.driver import usable_updates
from fedml.core.round.secure.step import central_dp, client_input, noised, summed_update
from fedml.core.steps import Steps
from fedml.tracking import RunResult, role_logger


class SecureLocalBackend:
    """sp with secure aggregation: trains clients in this process, then sums them through the protocol.

    Parameters
    ----------
    local
        Trains the round's clients (with the client steps: local DP noise comes before masking).
    settings
        ``secure_aggregation_args``.
    steps
        The run's chains (central DP's clip bound and noise, when on).

    """

    presummed = True
    retries = 0

    def __init__(self, local: LocalBackend, settings: SecAggArgs, steps: Steps) -> None:
        self.local = local
        self.settings = settings
        self.name = local.name
        self.central = central_dp(steps)
        self.log = role_logger("Server", 0)

    def open(self) -> None:
        """Nothing to prepare."""

    def clients(self) -> list[int]:
        """Return every client id."""
        return self.local.clients()

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted``."""
        return wanted

    def train(self, task: RoundTask) -> SummedUpdate:
        """Train the task's clients, mask, sum and unmask their inputs; return the mean.

        Raises
        ------
        SecAggError
            If the round's protocol fails.

        """
        state = task.global_state
        updates = usable_updates(task.round_idx, self.local.train(task), self.log, state)
        clip = self.central.clipping_norm if self.central is not None else None
        inputs = {str(u.client_idx): client_input(u, state, clip) for u in updates}
        total, weight, _ = run_secagg_round(
            {c: v for c, (v, _) in inputs.items()},
            {c: w for c, (_, w) in inputs.items()},
            self.settings,
            round_idx=task.round_idx,
            keep_messages=False,
        )
        return noised(summed_update(total, weight, len(inputs), state), self.central, task.round_idx)

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """Nothing to release."""
