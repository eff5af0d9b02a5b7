"""``FederatedRound``: the one loop that runs every round of every backend.

Each round it samples clients (seeded), asks the backend to train them from the global state, passes the
results through the server steps, applies the algorithm's server rule, evaluates, tracks and
checkpoints. Where the clients train (this process, MPI workers, NCCL ranks, remote peers) is the
backend's business; how the results are checked and combined is the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedml.core.aggregation import finite_states
from fedml.core.algorithms import Algorithm, RoundContext, RoundResults, SummedUpdate, Update
from fedml.core.algorithms.base import Aggregator, Checkpointable, Trainer
from fedml.core.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    check_resumable,
    load_checkpoint,
    run_identity,
    save_checkpoint,
)
from fedml.core.round.backend import Backend, RoundTask
from fedml.core.sampling import sample_clients
from fedml.core.steps import Steps, build_steps, check_compatibility
from fedml.errors import AggregationError, ConfigError, FedMLError, RoundIncompleteError
from fedml.tracking import Progress, RunResult, RunTracker, role_logger

if TYPE_CHECKING:
    from fedml.data import ClientData


class FederatedRound:
    """Runs all rounds of one run on the server side over any ``Backend``.

    Parameters
    ----------
    args
        The run's arguments.
    device
        Where the global model is evaluated.
    test_data
        The global test set the server evaluates on; ``None`` when the server has none.
    algorithm
        The federated optimizer; its ``server_update`` turns a round's results into the next state.
    trainer, aggregator
        Handed to the algorithm through the round context.
    steps
        The run's client and server chains; built from ``args`` when omitted.
    names
        ``{"dataset": ..., "model": ...}``: what runs, when it is not what the configuration names.
    engine
        How clients train (``sequential``, ``vectorized``), recorded in the result.
    data_seconds
        How long loading the dataset took, recorded as the ``data`` phase.

    """

    def __init__(
        self,
        args: Any,
        device: torch.device,
        test_data: ClientData | None,
        algorithm: Algorithm,
        trainer: Trainer,
        aggregator: Aggregator,
        steps: Steps | None = None,
        names: Mapping[str, str] | None = None,
        engine: str = "",
        data_seconds: float | None = None,
    ) -> None:
        self.args = args
        self.names = dict(names or {})
        self.engine = engine
        self.data_seconds = data_seconds
        self.device = device
        self.test_data = test_data
        self.algorithm = algorithm
        self.trainer = trainer
        self.aggregator = aggregator
        self.steps = steps if steps is not None else build_steps(args)
        self.tracker: RunTracker | None = None
        self.log = role_logger("Server", 0)
        self.first_round = 0

    def run(self, backend: Backend) -> RunResult:
        """Run every round still to run on ``backend``; tell it the outcome and return the result.

        Raises
        ------
        NotSupportedError
            Before anything starts, if a step or the algorithm cannot work on this backend.

        """
        check_compatibility(self.steps, self.algorithm, backend.name, presummed=backend.presummed)
        try:
            state = self.start()
            backend.open()
            tracker = self._started()
            bar = Progress(self.args.comm_round, self.first_round, enabled=False if self.args.quiet else None)
            for round_idx in range(self.first_round, self.args.comm_round):
                reason = self.stop_reason(round_idx)
                if reason is not None:
                    self.stop_early(round_idx, reason)
                    break
                began = tracker.round_started()
                # Named, so a round's results are freed only when the next arrive: the allocator then
                # reuses their memory instead of faulting in fresh pages (a third fewer on many clients).
                results = self.train(round_idx, state, backend)
                state = self.finish(round_idx, state, results)
                tracker.round_done(began)
                last = tracker.history[-1]["test_accuracy"] if tracker.history else None
                bar.advance(last, client_count(results), self.args.client_num_per_round)
            bar.close()
            result = self.result()
        except BaseException as exc:
            if self.tracker is not None:
                self.tracker.fail(exc)
            backend.close(None, exc)
            raise
        backend.close(result, None)
        return result

    def start(self) -> dict[str, torch.Tensor]:
        """Open the run directory, log the header and the steps, and return the initial global state.

        With ``resume_from`` the checkpoint is read and checked first (same run identity, rounds left
        to run, a model state that fits), so a refused resume leaves no run directory behind; after a
        resume, ``first_round`` is the index of the first round still to run.

        Raises
        ------
        ConfigError
            If the checkpoint cannot be resumed here, naming why.

        """
        checkpoint = self._resume_point()
        self.tracker = RunTracker(
            self.args,
            dataset=self.names.get("dataset"),
            model=self.names.get("model"),
            engine=self.engine,
            data_seconds=self.data_seconds,
        )
        self.tracker.start(self.args.client_num_in_total)
        for step in self.steps.all():
            self.log.info("%s", step.describe())
        if checkpoint is not None:
            if checkpoint.algorithm_state and isinstance(self.algorithm, Checkpointable):
                self.algorithm.load_state_dict(checkpoint.algorithm_state)
            self._load_steps_state(checkpoint)
            self.first_round = checkpoint.rounds_done
            previous = Path(self.args.resume_from).expanduser().parent / "metrics.jsonl"
            self.tracker.carry_over(previous, checkpoint.rounds_done)
            self.log.info("Resumed from %s after round %d", self.args.resume_from, self.first_round)
        return self.aggregator.get_model_params()

    def _load_steps_state(self, checkpoint: Checkpoint) -> None:
        """Give each step with state (the DP ledger, an adaptive clip bound) what the checkpoint saved.

        Raises
        ------
        ConfigError
            If a step with state has none in the checkpoint: resuming would forget, say, the privacy
            already spent.

        """
        for step in self.steps.all():
            if not isinstance(step, Checkpointable):
                continue
            if step.name not in checkpoint.steps_state:
                raise ConfigError(
                    f"tracking_args.resume_from: {self.args.resume_from} holds no state of the {step.name} "
                    "step (it was written by a run without it); resuming would lose what it had counted"
                )
            step.load_state_dict(checkpoint.steps_state[step.name])

    def stop_reason(self, round_idx: int) -> str | None:
        """Return why round ``round_idx`` must not run (a step's budget would be exceeded), else ``None``."""
        for step in self.steps.all():
            reason = step.stop_reason(round_idx)
            if reason is not None:
                return reason
        return None

    def stop_early(self, round_idx: int, reason: str) -> None:
        """End training before round ``round_idx``: log why, evaluate the model if the last round was not.

        The run then finishes as usual (final checkpoint, summary with ``stopped_early``).
        """
        tracker = self._started()
        self.log.warning("Training stops before round %d: %s", round_idx + 1, reason)
        tracker.stopped_early = reason
        evaluated = tracker.history[-1]["round"] if tracker.history else 0
        if round_idx > 0 and evaluated < round_idx and self.test_data is not None:
            test = self.aggregator.test(self.test_data, self.device, self.args)
            tracker.log_round(round_idx - 1, test, float("nan"), None, self.step_metrics())

    def step_metrics(self) -> dict[str, float]:
        """Return what the steps add to an evaluated round's record (``epsilon``, ``delta``)."""
        metrics: dict[str, float] = {}
        for step in self.steps.all():
            metrics.update(step.round_metrics())
        return metrics

    def _resume_point(self) -> Checkpoint | None:
        if not self.args.resume_from:
            return None
        checkpoint = load_checkpoint(self.args.resume_from)
        check_resumable(checkpoint, self.args)
        try:
            self.aggregator.set_model_params(checkpoint.model_state)
        except (RuntimeError, KeyError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(
                f"tracking_args.resume_from: {self.args.resume_from}: its model state does not fit "
                f"model_args.model {self.args.model!r} ({first})"
            ) from exc
        return checkpoint

    def _started(self) -> RunTracker:
        if self.tracker is None:
            raise FedMLError("the run has not started: FederatedRound.start() opens its directory")
        return self.tracker

    def task(self, round_idx: int, state: dict[str, torch.Tensor], backend: Backend) -> RoundTask:
        """Return round ``round_idx``'s work: the sampled clients with their payloads, from ``state``."""
        clients = self.clients(
            round_idx, backend.clients(), backend.selection_size(self.args.client_num_per_round)
        )
        payloads = {c: self.algorithm.client_payload(c) for c in clients}
        return RoundTask(round_idx, state, clients, payloads, self.args.client_num_per_round)

    def train(self, round_idx: int, state: dict[str, torch.Tensor], backend: Backend) -> RoundResults:
        """Have ``backend`` train round ``round_idx``; retry the round when too few replies arrived.

        A retry samples again from the clients online then (the same choice for the same online set)
        and is made at most ``backend.retries`` times.

        Raises
        ------
        RoundIncompleteError
            If the last try still got too few replies.

        """
        for attempt in range(backend.retries + 1):
            try:
                return backend.train(self.task(round_idx, state, backend))
            except RoundIncompleteError as exc:
                # Clients that replied released their updates even if the round is given up.
                for step in self.steps.all():
                    step.account(round_idx, exc.updates, aggregated=False)
                if attempt == backend.retries:
                    raise
                self.log.warning(
                    "Round %d is retried (%d of %d): %s", round_idx + 1, attempt + 1, backend.retries, exc
                )
        raise FedMLError("unreachable: the last try returns or raises")

    def clients(self, round_idx: int, candidates: list[int], count: int) -> list[int]:
        """Return ``count`` of ``candidates`` for round ``round_idx`` (seeded; the same on every backend)."""
        chosen = sample_clients(self.args.random_seed, round_idx, len(candidates), count)
        return [candidates[i] for i in chosen]

    def context(self, round_idx: int) -> RoundContext:
        """Return what the algorithm sees in round ``round_idx``."""
        return RoundContext(round_idx, self.args, self.device, self.trainer, self.aggregator)

    def checkpoint(self, rounds_done: int) -> None:
        """Save the global model and the algorithm's state in the run directory's ``checkpoint.pt``."""
        algorithm = self.algorithm
        algorithm_state = algorithm.state_dict() if isinstance(algorithm, Checkpointable) else {}
        model_state = self.aggregator.get_model_params()
        steps_state = {
            step.name: step.state_dict() for step in self.steps.all() if isinstance(step, Checkpointable)
        }
        checkpoint = Checkpoint(
            rounds_done, model_state, algorithm_state, run_identity(self.args), steps_state
        )
        save_checkpoint(self._started().run_dir / CHECKPOINT_FILE, checkpoint)

    def finish(
        self, round_idx: int, global_state: dict[str, torch.Tensor], results: RoundResults
    ) -> dict[str, torch.Tensor]:
        """Turn the round's results into the next global state, then evaluate and checkpoint when due.

        Individual updates with non-finite values or a non-positive weight are dropped with a warning
        naming the client, so one diverged client does not poison the model; the rest pass through the
        server steps before the algorithm's server rule.

        Raises
        ------
        AggregationError
            If no usable update is left.

        """
        ctx = self.context(round_idx)
        for step in self.steps.all():
            step.account(round_idx, results)
        if isinstance(results, SummedUpdate):
            if results.weight <= 0:
                raise _diverged(round_idx, None)
            combined: RoundResults = results
        else:
            usable = usable_updates(round_idx, results, self.log, global_state)
            if not usable:
                raise _diverged(round_idx, len(results))
            for step in self.steps.server:
                usable = step.apply(usable, global_state, ctx)
            for step in self.steps.server:
                ctx.aggregator = step.wrap_aggregator(ctx.aggregator, usable, ctx)
            combined = usable
        # The aggregator's model is the robust rules' reference (norm clipping measures from it); in one
        # process the trainer shares that model and leaves the last trained client's weights in it.
        self.aggregator.set_model_params(global_state)
        new_state = self.algorithm.server_update(global_state, combined, ctx)
        self.aggregator.set_model_params(new_state)
        if self.test_data is not None and evaluates(self.args, round_idx):
            test = self.aggregator.test(self.test_data, self.device, self.args)
            self._started().log_round(
                round_idx, test, train_loss(combined), client_count(combined), self.step_metrics()
            )
        frequency = self.args.checkpoint_frequency
        if frequency and (round_idx + 1) % frequency == 0:
            self.checkpoint(round_idx + 1)
        return new_state

    def result(self) -> RunResult:
        """Save the final checkpoint (with ``save_model``), finish tracking and return the run's result."""
        if self.args.save_model:
            self.checkpoint(self.args.comm_round)
        return self._started().finish(self.aggregator.get_model_params())


def evaluates(args: Any, round_idx: int) -> bool:
    """Return whether round ``round_idx`` is evaluated (every ``frequency_of_the_test``-th, and the last)."""
    last = round_idx == args.comm_round - 1
    return last or (round_idx + 1) % args.frequency_of_the_test == 0


def usable_updates(
    round_idx: int,
    updates: list[Update],
    log: Any,
    reference: Mapping[str, torch.Tensor] | None = None,
) -> list[Update]:
    """Return the updates that can be aggregated; log each one dropped, naming the client and why.

    An update is dropped when its weight is not positive, a value is not finite, or (given the global
    state as ``reference``) its tensors' names, shapes or dtypes differ from the global model's.
    """
    fitting = [u for u in updates if _misfit(u, reference, round_idx, log) is None]
    usable = []
    for update, finite in zip(fitting, finite_states([u.state for u in fitting]), strict=True):
        if update.weight > 0 and finite:
            usable.append(update)
            continue
        log.warning(
            "Round %d: dropped the update of client %d (weight %s, non-finite values: %s)",
            round_idx + 1,
            update.client_idx,
            update.weight,
            not finite,
        )
    return usable


def _misfit(
    update: Update, reference: Mapping[str, torch.Tensor] | None, round_idx: int, log: Any
) -> str | None:
    """Return why ``update`` does not fit the global model (and log it), or ``None`` when it fits."""
    if reference is None:
        return None
    problem = None
    # Key views compare as sets without building any: this runs for every update of every round.
    if update.state.keys() != reference.keys():
        missing, extra = (
            sorted(set(reference) - set(update.state)),
            sorted(set(update.state) - set(reference)),
        )
        problem = f"tensors missing {missing[:3]}, unexpected {extra[:3]}"
    else:
        for name, tensor in update.state.items():
            want = reference[name]
            if tensor.shape != want.shape or tensor.dtype != want.dtype:
                problem = (
                    f"{name} is {tuple(tensor.shape)} {tensor.dtype}, the global model's "
                    f"{tuple(want.shape)} {want.dtype}"
                )
                break
    if problem is not None:
        log.warning(
            "Round %d: dropped the update of client %d, which does not fit the global model: %s",
            round_idx + 1,
            update.client_idx,
            problem,
        )
    return problem


def client_count(results: RoundResults) -> int:
    """Return how many client updates ``results`` holds (or went into a summed one)."""
    return results.clients if isinstance(results, SummedUpdate) else len(results)


def train_loss(results: RoundResults) -> float:
    """Return the sample-weighted mean ``train_loss`` of a round's results (NaN when none reported one)."""
    if isinstance(results, SummedUpdate):
        return results.metrics.get("train_loss", float("nan"))
    weighted = [(u.weight, u.metrics["train_loss"]) for u in results if "train_loss" in u.metrics]
    total = sum(w for w, _ in weighted)
    return sum(w * loss for w, loss in weighted) / total if total else float("nan")


def _diverged(round_idx: int, count: int | None) -> AggregationError:
    return AggregationError(
        f"round {round_idx + 1}: none of the {'' if count is None else f'{count} '}client updates is usable "
        "(non-finite values or zero weight); training diverged, try a smaller train_args.learning_rate"
    )
