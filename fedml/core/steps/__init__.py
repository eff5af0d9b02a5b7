"""Steps around aggregation: ordered chains of client-side and server-side steps, built from registries.

A client step runs where a client trains (in this process, on an MPI worker or an NCCL rank): it may
change the client's data before training (label flipping) and its update after (Byzantine updates;
later clipping, local noise, masking). A server step runs on the server between the round's updates
and the algorithm's server rule (robust filters; later unmasking, central noise, accounting). Each step
says whether it needs every client's update and which backends and engines can run it, and
``check_compatibility`` refuses an impossible combination at start with an error naming the step.

Steps are enabled by their YAML sections (``attack_args``, ``defense_args``); ``build_steps(args)``
asks every registered factory, in chain order, whether its step is on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from fedml.core.algorithms.base import Aggregator, Algorithm, Client, RoundContext, RoundResults, Update
from fedml.core.registry import Registry
from fedml.errors import NotSupportedError


class Step:
    """What every step declares; subclasses override the class attributes that differ.

    Attributes
    ----------
    name
        The step's registered name, for messages.
    needs_individual_updates
        True when the step must see each client's update, so it cannot follow a backend that sums them.
    backends
        The ``comm_args.backend`` names it runs on; ``None`` for all.
    engines
        The engines (``sequential``, ``vectorized``) it runs with; ``None`` for both.

    """

    name: str = "step"
    needs_individual_updates: bool = False
    backends: tuple[str, ...] | None = None
    engines: tuple[str, ...] | None = None

    def describe(self) -> str:
        """Return one line saying what the step does in this run, for the server's log."""
        return f"step {self.name}"

    def check(self, algorithm: Algorithm, backend: str, engine: str | None, presummed: bool) -> None:
        """Refuse a combination this step cannot honour, beyond what its attributes declare (none here).

        Raises
        ------
        FedMLError
            A subclass naming the step and what it cannot work with.

        """

    def account(self, round_idx: int, results: RoundResults, aggregated: bool = True) -> None:
        """Note what round ``round_idx`` released: every result the server received (nothing here).

        ``aggregated`` is False for the replies of a try that was given up (too few arrived): the
        clients released them, but no model was made from them.
        """

    def round_metrics(self) -> dict[str, float]:
        """Return what the step adds to an evaluated round's record (``epsilon``, ``delta``; none here)."""
        return {}

    def stop_reason(self, round_idx: int) -> str | None:
        """Return why round ``round_idx`` must not run (a privacy budget it would exceed), else ``None``."""
        return None


class ClientStep(Step):
    """A step where a client trains; both hooks pass their input through unless overridden."""

    def prepare(self, client: Client, ctx: RoundContext) -> Client:
        """Return the client to train (for example with poisoned data)."""
        return client

    def finish(self, update: Update, global_state: dict[str, torch.Tensor], ctx: RoundContext) -> Update:
        """Return what the client sends instead of ``update``."""
        return update


class ServerStep(Step):
    """A step on the server between the round's updates and the algorithm's server rule."""

    needs_individual_updates = True

    def apply(
        self, updates: list[Update], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> list[Update]:
        """Return the updates that go on to aggregation (filtered or transformed)."""
        return updates

    def wrap_aggregator(self, aggregator: Aggregator, updates: list[Update], ctx: RoundContext) -> Aggregator:
        """Return the aggregator the algorithm's server rule uses this round (``aggregator`` here).

        Called after ``apply`` with the updates going to aggregation; a step that acts on the combined
        state (central noise, before a server optimizer's step) wraps it.
        """
        return aggregator


StepFactory = Callable[[Any], Step | None]
"""``factory(args)`` returns the step when its section enables it, else ``None``."""


@dataclass(frozen=True)
class StepEntry:
    """A registered step: its factory and its place in the chain (lower runs first)."""

    factory: StepFactory
    position: int


CLIENT_STEPS: Registry[StepEntry] = Registry("client step", key="steps")
"""Client-side steps, run in ``position`` order: attack simulation (10), local DP (30); secure-aggregation
masking comes after the whole chain (``fedml.core.round.secure``)."""

SERVER_STEPS: Registry[StepEntry] = Registry("server step", key="steps")
"""Server-side steps, run in ``position`` order: unmasking comes first, then robust filters (20), central
DP (30) and the DP accountant (90)."""


@dataclass
class Steps:
    """The chains of one run."""

    client: list[ClientStep] = field(default_factory=list)
    server: list[ServerStep] = field(default_factory=list)

    def all(self) -> list[Step]:
        """Return every step, client side first."""
        return [*self.client, *self.server]


def build_steps(args: Any) -> Steps:
    """Return the client and server chains that ``args`` enables, each in chain order."""
    return Steps(
        client=[s for s in _enabled(CLIENT_STEPS, args) if isinstance(s, ClientStep)],
        server=[s for s in _enabled(SERVER_STEPS, args) if isinstance(s, ServerStep)],
    )


def check_compatibility(
    steps: Steps, algorithm: Algorithm, backend: str, engine: str | None = None, presummed: bool = False
) -> None:
    """Refuse a run whose steps or algorithm cannot work on ``backend`` with ``engine``.

    Parameters
    ----------
    steps
        The run's chains.
    algorithm
        The federated optimizer.
    backend
        The ``comm_args.backend`` name.
    engine
        The engine that trains clients in this process, or ``None`` when none does.
    presummed
        True when the backend sums the updates before the server sees them (NCCL's all-reduce).

    Raises
    ------
    NotSupportedError
        Naming the step (or algorithm) and the backend or engine, and what would work instead.
    FedMLError
        What a step's own ``check`` raises (``PrivacyError`` for DP that cannot hold).

    """
    if presummed and not algorithm.accepts_presummed_updates:
        raise NotSupportedError(
            f"comm_args.backend {backend} sums client updates before the server sees them, which "
            f"{algorithm.name} cannot use: it needs every client's update; use backend sp or MPI"
        )
    for step in steps.all():
        step.check(algorithm, backend, engine, presummed)
        if presummed and step.needs_individual_updates:
            raise NotSupportedError(
                f"comm_args.backend {backend} sums client updates before the server sees them, which the "
                f"{step.name} step cannot use: it needs every client's update; use backend sp or MPI"
            )
        if step.backends is not None and backend not in step.backends:
            raise NotSupportedError(
                f"the {step.name} step does not run on comm_args.backend {backend}; it runs on "
                f"{', '.join(step.backends)}"
            )
        if engine is not None and step.engines is not None and engine not in step.engines:
            raise NotSupportedError(
                f"the {step.name} step does not run with train_args.engine {engine}; it runs with "
                f"{', '.join(step.engines)}"
            )


def run_client_steps(
    steps: Sequence[ClientStep],
    update: Update,
    global_state: dict[str, torch.Tensor],
    ctx: RoundContext,
) -> Update:
    """Pass a trained client's update through the client chain, in order."""
    for step in steps:
        update = step.finish(update, global_state, ctx)
    return update


def prepare_client(steps: Sequence[ClientStep], client: Client, ctx: RoundContext) -> Client:
    """Pass a client through the client chain's ``prepare`` hooks, in order, before it trains."""
    for step in steps:
        client = step.prepare(client, ctx)
    return client


def _enabled(registry: Registry[StepEntry], args: Any) -> list[Step]:
    entries = sorted((registry.get(name).position, name) for name in registry)
    found = []
    for _, name in entries:
        step = registry.get(name).factory(args)
        if step is not None:
            found.append(step)
    return found


def _attack_step(args: Any) -> Step | None:
    from fedml.core.steps.attack import attack_step

    return attack_step(args)


def _defense_step(args: Any) -> Step | None:
    from fedml.core.steps.defense import defense_step

    return defense_step(args)


CLIENT_STEPS.register(
    "attack", StepEntry(_attack_step, position=10), settings="fedml.core.steps.attack:AttackArgs"
)
SERVER_STEPS.register(
    "defense", StepEntry(_defense_step, position=20), settings="fedml.core.steps.defense:DefenseArgs"
)


def _local_dp_step(args: Any) -> Step | None:
    from fedml.core.privacy.steps import local_dp_step

    return local_dp_step(args)


def _central_dp_step(args: Any) -> Step | None:
    from fedml.core.privacy.steps import central_dp_step

    return central_dp_step(args)


def _accountant_step(args: Any) -> Step | None:
    from fedml.core.privacy.steps import accountant_step

    return accountant_step(args)


CLIENT_STEPS.register(
    "local_dp", StepEntry(_local_dp_step, position=30), settings="fedml.core.privacy.settings:DPArgs"
)
SERVER_STEPS.register("central_dp", StepEntry(_central_dp_step, position=30))


def _secure_aggregation_step(args: Any) -> Step | None:
    from fedml.core.round.secure import secure_aggregation_step

    return secure_aggregation_step(args)


SERVER_STEPS.register(
    "secure_aggregation",
    StepEntry(_secure_aggregation_step, position=5),
    settings="fedml.core.privacy.secagg.settings:SecAggArgs",
)
SERVER_STEPS.register("dp_accountant", StepEntry(_accountant_step, position=90))

__all__ = [
    "CLIENT_STEPS",
    "SERVER_STEPS",
    "ClientStep",
    "ServerStep",
    "Step",
    "StepEntry",
    "StepFactory",
    "Steps",
    "build_steps",
    "check_compatibility",
    "prepare_client",
    "run_client_steps",
]
