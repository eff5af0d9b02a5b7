"""``dp_args``: which differential privacy a run has, and the noise it needs for its guarantee.

``DPArgs`` declares the keys; ``privacy_plan(args)`` turns them into what the steps use: the mode, the
noise multiplier (given, or calibrated from a target ``epsilon`` before training), ``delta``, the
accountant and whether noise is seeded. The plan is computed once per run configuration.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import Field

from fedml.config.sections import ComponentSettings, read_settings
from fedml.core.privacy.accountant import AccountantName, calibrate_noise, epsilon, require_opacus
from fedml.core.privacy.dpsgd import poisson_schedule
from fedml.errors import PrivacyError

DPMode = Literal["ldp", "cdp", "dpsgd"]
DP_MODES: tuple[str, ...] = get_args(DPMode)
"""Valid ``dp_args.dp_solution_type`` names."""


class DPArgs(ComponentSettings):
    """``dp_args``: differential privacy around the round (``ldp``, ``cdp``) or inside clients (``dpsgd``).

    Give either ``noise_multiplier`` or a target ``epsilon`` (the multiplier is then calibrated before
    training for ``comm_round`` rounds). ``max_epsilon`` stops training before a round would exceed it.
    """

    section = "dp_args"
    enable_dp: bool = False
    dp_solution_type: DPMode | None = None
    clipping_norm: float = Field(1.0, gt=0)
    noise_multiplier: float | None = Field(None, ge=0)
    epsilon: float | None = Field(None, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_epsilon: float | None = Field(None, gt=0)
    accountant: AccountantName = "rdp"
    adaptive_clipping: bool = False
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_learning_rate: float = Field(0.2, gt=0)
    clipped_count_stddev: float | None = Field(None, gt=0)

    @classmethod
    def cross_check(cls, sections: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Check that enabled DP names its mode and exactly one of a noise multiplier and a target."""
        dp = sections["dp_args"]
        if not dp.enable_dp:
            return []
        errors = []
        if dp.dp_solution_type is None:
            errors.append(
                (
                    "dp_args.dp_solution_type",
                    f"enable_dp is true but no type is set; valid: {', '.join(DP_MODES)}",
                )
            )
        if (dp.noise_multiplier is None) == (dp.epsilon is None):
            errors.append(
                (
                    "dp_args.noise_multiplier",
                    "give exactly one of noise_multiplier and epsilon (a target to calibrate the noise for)",
                )
            )
        if dp.adaptive_clipping and dp.dp_solution_type != "cdp":
            errors.append(("dp_args.adaptive_clipping", "applies to dp_solution_type cdp only"))
        if dp.max_epsilon is not None and dp.epsilon is not None and dp.max_epsilon < dp.epsilon:
            errors.append(
                ("dp_args.max_epsilon", f"{dp.max_epsilon} is below the target epsilon {dp.epsilon}")
            )
        return errors


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP of one run, resolved before training.

    Attributes
    ----------
    mode
        ``ldp``, ``cdp`` or ``dpsgd``.
    clipping_norm
        Clip bound of a client's delta (``ldp``, ``cdp``: the initial bound with adaptive clipping) or
        of a sample's gradient (``dpsgd``).
    noise_multiplier
        Noise std over the sensitivity of one release, for ``ldp`` and ``cdp`` (with adaptive
        clipping: of the update and the clipped count together). For ``dpsgd`` the configured one,
        ``nan`` with a target epsilon: each client then calibrates its own (``dpsgd_noise``).
    delta, accountant, max_epsilon, target_epsilon
        As in ``dp_args``.
    sample_rate
        Client sampling rate ``client_num_per_round / client_num_in_total``.
    seeded
        True in simulation: noise comes from seeded generators, reproducible on every backend.
    seed, comm_round, epochs, batch_size
        What the noise streams and the calibration depend on.
    adaptive
        ``(target_quantile, clip_learning_rate, clipped_count_stddev)`` with adaptive clipping, else ``None``.

    """

    mode: DPMode
    clipping_norm: float
    noise_multiplier: float
    delta: float
    accountant: AccountantName
    max_epsilon: float | None
    target_epsilon: float | None
    sample_rate: float
    seeded: bool
    seed: int
    comm_round: int
    epochs: int
    batch_size: int
    adaptive: tuple[float, float, float] | None

    @property
    def release_noise(self) -> float:
        """The noise multiplier of one ``ldp``/``cdp`` release over its sensitivity, for the accountant.

        ``cdp`` (and DP-SGD) count neighbours by adding or removing one client (sample): the sum moves
        by at most ``clipping_norm``. Local DP protects any two inputs of one client, whose clipped
        deltas can differ by twice the bound, so its noise counts half.
        """
        return self.noise_multiplier / _sensitivity(self.mode)

    def dpsgd_noise(self, samples: int) -> float:
        """Return the DP-SGD noise multiplier of a client with ``samples`` samples.

        The configured one, or the one calibrated so that the client stays within the target epsilon
        even if it trained in every round (a client cannot know how often it will be sampled).
        """
        if self.target_epsilon is None:
            return self.noise_multiplier
        rate, steps = poisson_schedule(samples, self.batch_size, self.epochs)
        if steps == 0:
            return 0.0  # a client without samples releases nothing
        return _calibrated(self.target_epsilon, self.delta, rate, steps * self.comm_round, self.accountant)


def privacy_plan(args: Any) -> PrivacyPlan | None:
    """Return the run's ``PrivacyPlan``, or ``None`` without ``dp_args.enable_dp``.

    Raises
    ------
    PrivacyError
        If Opacus is missing, or no noise reaches the target epsilon.

    """
    dp = read_settings(args, DPArgs)
    if not dp.enable_dp:
        return None
    require_opacus()
    total = int(args.client_num_in_total)
    per_round = min(int(args.client_num_per_round), total)
    count_stddev = dp.clipped_count_stddev if dp.clipped_count_stddev is not None else per_round / 20
    return _plan(
        dp.dp_solution_type,
        float(dp.clipping_norm),
        dp.noise_multiplier,
        dp.epsilon,
        float(dp.delta),
        dp.accountant,
        dp.max_epsilon,
        per_round / total,
        getattr(args, "training_type", "simulation") == "simulation",
        int(args.random_seed),
        int(args.comm_round),
        int(args.epochs),
        int(args.batch_size),
        (dp.target_quantile, dp.clip_learning_rate, count_stddev) if dp.adaptive_clipping else None,
    )


@functools.lru_cache(maxsize=16)
def _plan(
    mode: DPMode | None,
    clipping_norm: float,
    noise_multiplier: float | None,
    target: float | None,
    delta: float,
    accountant: AccountantName,
    max_epsilon: float | None,
    sample_rate: float,
    seeded: bool,
    seed: int,
    comm_round: int,
    epochs: int,
    batch_size: int,
    adaptive: tuple[float, float, float] | None,
) -> PrivacyPlan:
    if mode is None:
        raise PrivacyError("dp_args.dp_solution_type: enable_dp is true but no type is set")
    noise = noise_multiplier
    if mode != "dpsgd" and target is not None:
        # ldp: the server sees each release, so sampling does not amplify, and it may pick a client
        # every round; cdp: the model's readers do not know who was sampled.
        rate = sample_rate if mode == "cdp" else 1.0
        noise = _calibrated(target, delta, rate, comm_round, accountant) * _sensitivity(mode)
    plan = PrivacyPlan(
        mode,
        clipping_norm,
        math.nan if noise is None else float(noise),
        delta,
        accountant,
        max_epsilon,
        target,
        sample_rate,
        seeded,
        seed,
        comm_round,
        epochs,
        batch_size,
        adaptive,
    )
    if max_epsilon is not None and noise == 0:
        raise PrivacyError(
            "dp_args.max_epsilon: noise_multiplier 0 gives an infinite epsilon, so no round fits the budget"
        )
    if adaptive is not None and mode == "cdp" and noise is not None:
        _, _, count_stddev = adaptive
        if 2 * count_stddev <= noise:
            raise PrivacyError(
                f"dp_args.clipped_count_stddev {count_stddev:g}: adaptive clipping needs it above half the "
                f"noise multiplier {noise:g} (Andrew et al. 2021); raise it or lower the noise"
            )
    return plan


def _sensitivity(mode: DPMode) -> float:
    """Sensitivity of one release in units of ``clipping_norm`` (see ``PrivacyPlan.release_noise``)."""
    return 2.0 if mode == "ldp" else 1.0


@functools.lru_cache(maxsize=4096)
def _calibrated(target: float, delta: float, rate: float, steps: int, accountant: AccountantName) -> float:
    return calibrate_noise(target, delta, rate, steps, accountant)


def reached(history: list[tuple[float, float, int]], plan: PrivacyPlan) -> float:
    """Return the epsilon of ``history`` at the plan's delta with the plan's accountant."""
    return epsilon(history, plan.delta, plan.accountant)
