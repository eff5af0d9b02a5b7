"""The DP steps of the round: local clip-and-noise on clients, central DP on the server, the accountant.

- ``LocalDP`` (client step, ``dp_solution_type: ldp``): a client clips its delta from the global model
  to ``clipping_norm`` and adds Gaussian noise of std ``noise_multiplier * clipping_norm`` before sending.
- ``CentralDP`` (server step, ``cdp``): DP-FedAvg (McMahan et al. 2018). The server clips each delta,
  averages with equal weights and adds noise of std ``noise_multiplier * clipping_norm / m`` to the mean
  (``m`` the updates averaged: ``client_num_per_round`` when every client replies). Under secure
  aggregation each client clips its own delta before masking and the noise goes on the unmasked mean. With
  ``adaptive_clipping`` the bound follows the ``target_quantile`` of the norms (Andrew et al. 2021)
  through a noised count of unclipped deltas.
- ``PrivacyAccountant`` (server step, any mode): composes what was released, reports ``epsilon`` and
  ``delta`` with every evaluated round, and stops the run before ``max_epsilon`` would be exceeded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedml.core.algorithms.base import Aggregator, Algorithm, RoundContext, RoundResults, SummedUpdate, Update
from fedml.core.privacy.dp import (
    CENTRAL_NOISE_STREAM,
    LOCAL_NOISE_STREAM,
    add_gaussian,
    clipped,
    delta_of,
    noise_for_quantile_query,
    noise_generator,
    with_delta,
)
from fedml.core.privacy.settings import PrivacyPlan, privacy_plan, reached
from fedml.core.steps import ClientStep, ServerStep
from fedml.errors import PrivacyError

MEAN_PRESERVING_RULES = ("norm_diff_clipping",)
"""Robust rules central DP combines with: they only shrink deltas, so the mean keeps its sensitivity."""


class LocalDP(ClientStep):
    """Clip a client's delta and add Gaussian noise to it before it leaves the client.

    Parameters
    ----------
    plan
        The run's privacy plan (``mode`` ``ldp``).

    """

    name = "local DP"

    def __init__(self, plan: PrivacyPlan) -> None:
        self.plan = plan

    def describe(self) -> str:
        """Return the clip bound and noise, for the log."""
        plan = self.plan
        return (
            f"Local DP: each client clips its delta to {plan.clipping_norm:g} and adds Gaussian noise "
            f"of std {plan.noise_multiplier * plan.clipping_norm:.4g} "
            f"(noise multiplier {plan.noise_multiplier:.4g})"
        )

    def finish(self, update: Update, global_state: dict[str, torch.Tensor], ctx: RoundContext) -> Update:
        """Return ``update`` with its delta clipped and noised."""
        plan = self.plan
        state, _ = clipped(update.state, global_state, plan.clipping_norm)
        generator = noise_generator(
            plan.seeded, plan.seed, LOCAL_NOISE_STREAM, ctx.round_idx, update.client_idx
        )
        std = plan.noise_multiplier * plan.clipping_norm
        if std == 0:
            return dataclasses.replace(update, state=state)
        noisy = add_gaussian(delta_of(state, global_state), std, generator)
        return dataclasses.replace(update, state=with_delta(state, global_state, noisy))


class CentralDP(ServerStep):
    """DP-FedAvg on the server: clip every delta, average with equal weights, noise the mean.

    Parameters
    ----------
    plan
        The run's privacy plan (``mode`` ``cdp``).
    defense
        The robust rules of the run (``defense_args`` chain), checked at start.

    """

    name = "central DP"
    needs_individual_updates = True

    def __init__(self, plan: PrivacyPlan, defense: Sequence[str] = (), secure: bool = False) -> None:
        self.plan = plan
        self.defense = list(defense)
        self.secure = secure
        # Under secure aggregation the clipping happens on the clients: the server sees only the sum.
        self.needs_individual_updates = not secure
        self.clipping_norm = plan.clipping_norm
        self.update_noise = plan.noise_multiplier
        if plan.adaptive is not None:
            self.update_noise = noise_for_quantile_query(plan.noise_multiplier, plan.adaptive[2])
        self._noise_std = 0.0
        self._generator: torch.Generator | None = None

    def describe(self) -> str:
        """Return the clip bound and noise, for the log."""
        plan = self.plan
        adaptive = ""
        if plan.adaptive is not None:
            quantile, rate, count_stddev = plan.adaptive
            adaptive = (
                f"; adaptive clipping to the {quantile:g} quantile (learning rate {rate:g}, clipped-count "
                f"noise std {count_stddev:g}, update noise multiplier {self.update_noise:.4g})"
            )
        if self.secure:
            return (
                f"Central DP under secure aggregation: each client clips its delta to {plan.clipping_norm:g} "
                f"before masking, weights are equal, and the server adds noise of std "
                f"{plan.noise_multiplier:.4g} x clip / clients to the unmasked mean"
            )
        return (
            f"Central DP: the server clips each delta to {plan.clipping_norm:g}, averages with equal weights "
            f"and adds noise of std {plan.noise_multiplier:.4g} x clip / clients{adaptive}"
        )

    def check(self, algorithm: Algorithm, backend: str, engine: str | None, presummed: bool) -> None:
        """Refuse what would void the guarantee: a pre-summing backend, a non-mean rule, robust averages.

        Raises
        ------
        PrivacyError
            Naming the backend, algorithm or rule, and what works instead.

        """
        if presummed and not self.secure:
            raise PrivacyError(
                f"dp_args.dp_solution_type cdp clips each client's delta on the server, but "
                f"comm_args.backend {backend} sums them first; use ldp or dpsgd there, or backend sp or MPI"
            )
        if not algorithm.accepts_presummed_updates:
            raise PrivacyError(
                f"dp_args.dp_solution_type cdp noises the mean of the client states, but "
                f"{algorithm.name}'s server rule uses more of each update (per-client state); use FedAvg, "
                "FedProx or FedOpt, or ldp"
            )
        others = [rule for rule in self.defense if rule not in MEAN_PRESERVING_RULES]
        if others:
            raise PrivacyError(
                f"dp_args.dp_solution_type cdp calibrates its noise to the mean's sensitivity, which "
                f"defense_args.defense_type {others[0]} does not keep; use ldp with robust rules, or only "
                f"{', '.join(MEAN_PRESERVING_RULES)}"
            )

    def apply(
        self, updates: list[Update], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> list[Update]:
        """Clip every update's delta to the current bound and give each the same weight."""
        bound = self.clipping_norm
        out, unclipped = [], 0
        for update in updates:
            state, norm = clipped(update.state, global_state, bound)
            unclipped += norm <= bound
            out.append(dataclasses.replace(update, state=state, weight=1.0))
        plan = self.plan
        self._generator = noise_generator(plan.seeded, plan.seed, CENTRAL_NOISE_STREAM, ctx.round_idx)
        self._noise_std = self.update_noise * bound / max(len(out), 1)
        if plan.adaptive is not None:
            self._adapt(unclipped, len(out))
        return out

    def noise_presummed(self, summed: SummedUpdate, round_idx: int) -> SummedUpdate:
        """Return a secure-aggregation round's mean with this round's central noise added.

        Under secure aggregation each client clipped its delta to ``clipping_norm`` and sent weight 1
        before masking, so ``summed`` is DP-FedAvg's equal-weight mean of clipped deltas; the noise of
        std ``noise_multiplier * clipping_norm / clients`` goes on the unmasked mean.
        """
        plan = self.plan
        generator = noise_generator(plan.seeded, plan.seed, CENTRAL_NOISE_STREAM, round_idx)
        std = self.update_noise * self.clipping_norm / max(summed.clients, 1)
        return dataclasses.replace(summed, state=add_gaussian(summed.state, std, generator))

    def wrap_aggregator(self, aggregator: Aggregator, updates: list[Update], ctx: RoundContext) -> Aggregator:
        """Return ``aggregator`` whose combined state gets this round's central noise."""
        if self._generator is None:
            raise PrivacyError(
                "central DP: the aggregator is wrapped before the round's updates were clipped"
            )
        generator, self._generator = self._generator, None
        return NoisyAggregator(aggregator, self._noise_std, generator)

    def state_dict(self) -> dict[str, Any]:
        """Return the adaptive clip bound, for checkpoints."""
        return {"clipping_norm": self.clipping_norm}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the clip bound of ``state_dict``."""
        self.clipping_norm = float(state["clipping_norm"])

    def _adapt(self, unclipped: int, count: int) -> None:
        """Move the bound geometrically towards the target quantile of the norms, from a noised count."""
        if self._generator is None or count == 0:
            return
        quantile, rate, count_stddev = self.plan.adaptive or (0.5, 0.0, 0.0)
        noise = float(torch.randn((), generator=self._generator)) * count_stddev
        fraction = (unclipped + noise) / count
        self.clipping_norm *= math.exp(-rate * (fraction - quantile))


class NoisyAggregator:
    """An aggregator whose combined state gets Gaussian noise on every floating-point tensor.

    Parameters
    ----------
    inner
        The run's aggregator; everything else is delegated to it.
    std
        The noise std.
    generator
        Where the noise comes from.

    """

    def __init__(self, inner: Aggregator, std: float, generator: torch.Generator) -> None:
        self.inner = inner
        self.std = std
        self.generator = generator

    def aggregate_with_hooks(
        self, updates: Sequence[tuple[float, Mapping[str, torch.Tensor]]]
    ) -> dict[str, torch.Tensor]:
        """Return the inner aggregator's combination plus the noise."""
        return add_gaussian(self.inner.aggregate_with_hooks(updates), self.std, self.generator)

    def set_model_params(self, model_parameters: Mapping[str, torch.Tensor]) -> None:
        """Delegate to the inner aggregator."""
        self.inner.set_model_params(model_parameters)

    def get_model_params(self) -> dict[str, torch.Tensor]:
        """Delegate to the inner aggregator."""
        return self.inner.get_model_params()

    def test(self, test_data: Any, device: torch.device, args: Any) -> dict[str, float]:
        """Delegate to the inner aggregator."""
        return self.inner.test(test_data, device, args)


class PrivacyAccountant(ServerStep):
    """Composes the run's releases into (epsilon, delta), reports them and enforces ``max_epsilon``.

    ``cdp``: one subsampled Gaussian release a round (sample rate ``client_num_per_round /
    client_num_in_total``). ``ldp``: per client, one Gaussian release each round it took part in, not
    amplified by sampling (the server knows whom it sampled), with sensitivity twice the clip (any two
    inputs of the client); the epsilon reported is the largest client's. ``dpsgd``: per client, the
    ``(dp_noise_multiplier, dp_sample_rate, num_steps)`` its trainer reported, per round it took part
    in; again the largest client's epsilon.

    Parameters
    ----------
    plan
        The run's privacy plan.

    """

    name = "DP accountant"
    needs_individual_updates = False

    def __init__(self, plan: PrivacyPlan) -> None:
        self.plan = plan
        self.rounds = 0
        self.clients: dict[int, list[tuple[float, float, int]]] = {}
        self.presummed_rounds = 0
        self._cache: dict[tuple[tuple[float, float, int], ...], float] = {}

    def describe(self) -> str:
        """Return the accountant and delta, for the log."""
        plan = self.plan
        budget = f", stopping before epsilon {plan.max_epsilon:g}" if plan.max_epsilon is not None else ""
        target = f", noise calibrated for epsilon {plan.target_epsilon:g}" if plan.target_epsilon else ""
        return (
            f"DP accounting ({plan.mode}): {plan.accountant.upper()} at delta {plan.delta:g}{target}{budget}"
        )

    def check(self, algorithm: Algorithm, backend: str, engine: str | None, presummed: bool) -> None:
        """Refuse dpsgd on a backend that sums updates: its accounting needs each client's report.

        Raises
        ------
        PrivacyError
            Naming the backend.

        """
        if presummed and self.plan.mode == "dpsgd":
            raise PrivacyError(
                f"dp_args.dp_solution_type dpsgd is accounted from each client's reported steps, which "
                f"comm_args.backend {backend} sums away; use backend sp or MPI, or ldp"
            )

    def account(self, round_idx: int, results: RoundResults, aggregated: bool = True) -> None:
        """Add round ``round_idx``'s releases to the ledger.

        A try given up (``aggregated`` False) released nothing centrally, but each client that replied
        released its (locally noised) update.
        """
        if aggregated:
            self.rounds += 1
        if isinstance(results, SummedUpdate):
            # ldp behind an all-reduce: who trained is not known here, so bound every client by the rounds.
            self.presummed_rounds += 1
            return
        for update in results:
            self.clients.setdefault(update.client_idx, []).append(self._release(update))

    def epsilon(self, extra_round: bool = False) -> float:
        """Return the epsilon spent so far (with ``extra_round``: after one more round like the last)."""
        plan = self.plan
        if plan.mode == "cdp":
            return reached([(plan.release_noise, plan.sample_rate, self.rounds + extra_round)], plan)
        if self.presummed_rounds:
            return reached([(plan.release_noise, 1.0, self.rounds + extra_round)], plan)
        worst = 0.0
        for history in self.clients.values():
            steps = tuple(history + history[-1:]) if extra_round else tuple(history)
            worst = max(worst, self._epsilon_of(steps))
        return worst

    def round_metrics(self) -> dict[str, float]:
        """Return ``{"epsilon", "delta"}`` spent so far."""
        return {"epsilon": self.epsilon(), "delta": self.plan.delta}

    def stop_reason(self, round_idx: int) -> str | None:
        """Return why round ``round_idx`` would exceed ``max_epsilon``, or ``None`` while it fits."""
        budget = self.plan.max_epsilon
        if budget is None:
            return None
        if self.plan.mode != "cdp" and not self.clients and not self.presummed_rounds:
            # No round yet: predict the first from the plan (dpsgd clients have calibrated to it).
            if self.plan.mode == "dpsgd":
                return None
            after = reached([(self.plan.release_noise, 1.0, 1)], self.plan)
        else:
            after = self.epsilon(extra_round=True)
        if after <= budget:
            return None
        return (
            f"dp_args.max_epsilon {budget:g}: round {round_idx + 1} would bring epsilon to {after:.3f} "
            f"(delta {self.plan.delta:g}), so training stops after round {round_idx}"
        )

    def state_dict(self) -> dict[str, Any]:
        """Return the ledger, for checkpoints (a resumed run keeps counting what was spent)."""
        return {
            "rounds": self.rounds,
            "presummed_rounds": self.presummed_rounds,
            "clients": {str(c): [list(m) for m in history] for c, history in self.clients.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the ledger of ``state_dict``."""
        self.rounds = int(state["rounds"])
        self.presummed_rounds = int(state["presummed_rounds"])
        self.clients = {
            int(c): [(float(z), float(q), int(n)) for z, q, n in history]
            for c, history in state["clients"].items()
        }

    def _release(self, update: Update) -> tuple[float, float, int]:
        plan = self.plan
        if plan.mode != "dpsgd":
            return (plan.release_noise, 1.0, 1)
        metrics = update.metrics
        missing = [k for k in ("dp_noise_multiplier", "dp_sample_rate", "num_steps") if k not in metrics]
        if missing:
            raise PrivacyError(
                f"dpsgd: client {update.client_idx}'s update does not report {', '.join(missing)}; its "
                "trainer is not the DP-SGD one, so its privacy cannot be accounted"
            )
        return (
            float(metrics["dp_noise_multiplier"]),
            float(metrics["dp_sample_rate"]),
            int(metrics["num_steps"]),
        )

    def _epsilon_of(self, history: tuple[tuple[float, float, int], ...]) -> float:
        # Clients with the same releases (same sizes, same rounds taken part in) share one computation.
        merged: dict[tuple[float, float], int] = {}
        for z, q, n in history:
            merged[(z, q)] = merged.get((z, q), 0) + n
        key = tuple(sorted((z, q, n) for (z, q), n in merged.items()))
        if key not in self._cache:
            self._cache[key] = reached(list(key), self.plan)
        return self._cache[key]


def local_dp_step(args: Any) -> LocalDP | None:
    """Return the local DP step when ``dp_args`` asks for ``ldp``, else ``None``."""
    plan = privacy_plan(args)
    return LocalDP(plan) if plan is not None and plan.mode == "ldp" else None


def central_dp_step(args: Any) -> CentralDP | None:
    """Return the central DP step when ``dp_args`` asks for ``cdp``, else ``None``."""
    from fedml.core.robust import defense_chain

    plan = privacy_plan(args)
    if plan is None or plan.mode != "cdp":
        return None
    from fedml.core.round.secure import secagg_settings

    secure = secagg_settings(args) is not None
    return CentralDP(plan, defense_chain(args.defense_args), secure)


def accountant_step(args: Any) -> PrivacyAccountant | None:
    """Return the accountant when ``dp_args.enable_dp`` is set, else ``None``."""
    plan = privacy_plan(args)
    return PrivacyAccountant(plan) if plan is not None else None
