"""Run tracking: role-prefixed console lines, the run directory (config, metrics.jsonl, model), results.

Console lines go through ``logging`` under the ``fedml`` logger. ``configure_logging`` (called by
``fedml.init`` and ``fedml.run_simulation``) prints them to stdout only when the application has not
configured logging itself.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from fedml.core.files import atomic_torch_save, atomic_write_text, new_folder
from fedml.errors import ConfigError
from fedml.loggers import create_loggers

_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
"""libyaml's safe dumper where PyYAML was built with it: the same text as ``yaml.safe_dump``, 4x faster."""

_levels_set_by_fedml: set[int] = set()
"""Levels ``configure_logging`` gave the ``fedml`` logger: it may change those, never the application's."""


class _RolePrefix(logging.LoggerAdapter):
    def __init__(self, logger: logging.Logger, prefix: str) -> None:
        super().__init__(logger, {"prefix": prefix})
        self.prefix = prefix

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.prefix}{msg}", kwargs


def role_logger(role: str, rank: int, name: str = "fedml") -> logging.LoggerAdapter:
    """Return a logger whose lines start with ``[FedML-<role>(<rank>)]: ``, e.g. ``[FedML-Server(0)]: ``."""
    return _RolePrefix(logging.getLogger(name), f"[FedML-{role}({rank})]: ")


def configure_logging(level: int | str = logging.INFO) -> None:
    """Print fedml's lines of ``level`` and above to stdout, unless the application configured logging.

    ``level`` is a ``logging`` level or its name (``tracking_args.log_level``). Under a launcher
    (mpirun, torchrun), ranks other than 0 print only the warnings of data loading, so a job prints
    its data-loading lines once.
    """
    from fedml.simulation.launch import detect_launch

    logger = logging.getLogger("fedml")
    if logger.level == logging.NOTSET or logger.level in _levels_set_by_fedml:
        logger.setLevel(level)
        _levels_set_by_fedml.add(logger.level)
    data_logger = logging.getLogger("fedml.data")
    if detect_launch().rank != 0 and data_logger.level == logging.NOTSET:
        data_logger.setLevel(logging.WARNING)
    if not logger.hasHandlers():
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


class Progress:
    """The rounds' progress bar on an interactive terminal: done / total, ETA, last accuracy, replies.

    Parameters
    ----------
    total
        Rounds of the run.
    initial
        Rounds already done (a resumed run).
    enabled
        Draw the bar; ``None``: when standard error is a terminal.
    file
        Where to draw it (default standard error).

    """

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None, file: Any = None) -> None:
        stream = file if file is not None else sys.stderr
        self.bar: Any = None
        if enabled if enabled is not None else stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc="rounds", leave=False, file=stream, mininterval=0
            )

    def advance(
        self, accuracy: float | None = None, replied: int | None = None, expected: int | None = None
    ) -> None:
        """Count one round done, showing the last accuracy and, when given, clients replied / expected."""
        if self.bar is None:
            return
        postfix = {}
        if accuracy is not None and math.isfinite(accuracy):
            postfix["acc"] = f"{100 * accuracy:.1f}%"
        if replied is not None and expected is not None:
            postfix["clients"] = f"{replied}/{expected}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class RunResult:
    """What a run returns.

    Attributes
    ----------
    final_metrics
        The last evaluation: ``round``, ``test_accuracy``, ``test_loss``, ``train_loss``, ``seconds``.
    history
        One such record per evaluated round, in order (the lines of ``metrics.jsonl``).
    run_dir
        The run directory holding ``config.yaml``, ``metrics.jsonl`` and ``model.pt``.
    model_state
        The final global model state.
    engine
        How clients were trained (``sequential`` or ``vectorized``); empty when not known.
    round_seconds
        Wall time of every round run, evaluated or not, in order.
    phases
        Seconds per phase: ``data`` (``fedml.data.load``, when the dataset came from it), ``setup``
        (from the round driver's start to its first round: run directory, resume, waiting for peers)
        and ``rounds``.

    """

    final_metrics: dict[str, float]
    history: list[dict[str, float]]
    run_dir: Path
    model_state: dict[str, torch.Tensor] = field(repr=False)
    engine: str = ""
    round_seconds: list[float] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)


SECRET_KEYS = ("auth_token", "broker_password")
"""Keys whose values never reach a run directory: ``config.yaml`` records them as ``<redacted>``."""


def redacted(config: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return ``config`` (section -> keys) with the values of ``SECRET_KEYS`` that are set replaced.

    Examples
    --------
    >>> redacted({"comm_args": {"auth_token": "s3cret", "host": "h"}})
    {'comm_args': {'auth_token': '<redacted>', 'host': 'h'}}

    """
    return {
        name: {k: "<redacted>" if k in SECRET_KEYS and v is not None else v for k, v in keys.items()}
        for name, keys in config.items()
    }


class RunTracker:
    """Writes one run's directory and its console lines.

    The directory is ``<tracking_args.run_dir>/<YYYYmmdd-HHMMSS>-<run_name>``; ``run_name`` defaults to
    ``<dataset>-<model>-<federated_optimizer>``. It receives ``config.yaml`` (the resolved configuration)
    at once, a line of ``metrics.jsonl`` per evaluated round, and ``model.pt`` (the final state, a
    ``torch.save``'d dict of tensors) at the end when ``tracking_args.save_model`` is true.

    ``dataset`` and ``model`` name what actually runs when the user passed their own (default: the
    configuration's names); ``engine`` and ``data_seconds`` (how long loading the data took) go into
    ``timings.json`` and the result.
    """

    def __init__(
        self,
        args: Any,
        role: str = "Server",
        rank: int = 0,
        dataset: str | None = None,
        model: str | None = None,
        engine: str = "",
        data_seconds: float | None = None,
    ) -> None:
        self.args = args
        self.log = role_logger(role, rank)
        self.history: list[dict[str, float]] = []
        self.started = time.perf_counter()
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.dataset = dataset or args.dataset
        self.model = model or args.model
        self.engine = engine
        self.data_seconds = data_seconds
        self.round_seconds: list[float] = []
        self.first_round_started: float | None = None
        self.stopped_early: str | None = None
        """Why training ended before ``comm_round`` (a privacy budget), for ``summary.json``."""
        name = args.run_name or f"{self.dataset}-{self.model}-{args.federated_optimizer}"
        # Before the run directory: a logger whose package is missing stops the run leaving nothing.
        self.loggers = create_loggers(args)
        self.run_dir = _new_run_dir(
            Path(args.run_dir).expanduser(), f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        )
        config = redacted(args.to_dict())
        text = yaml.dump(config, Dumper=_YAML_DUMPER, sort_keys=False)
        atomic_write_text(self.run_dir / "config.yaml", text)
        # Asked now, answered by the summary: the two git processes (a few ms) overlap the rounds.
        self._git_commit = _in_background(git_commit, Path.cwd())
        self._metrics = open(self.run_dir / "metrics.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        for logger in self.loggers:
            logger.start(self.run_dir, config)

    def start(self, client_num: int) -> None:
        """Log the run's header line."""
        args = self.args
        self.log.info(
            "Dataset: %s, Clients: %d, Rounds: %d, Algorithm: %s",
            self.dataset,
            client_num,
            args.comm_round,
            args.federated_optimizer,
        )

    def carry_over(self, previous: Path, rounds_done: int) -> int:
        """Copy the records of rounds ``1 .. rounds_done`` from a resumed run's ``metrics.jsonl``.

        So the finished run's ``metrics.jsonl`` lists every round exactly once: the rounds the resumed
        run completed and checkpointed, then the ones this run trains. Records of rounds after the
        checkpoint (trained again now) and lines that are not JSON records are left out. Returns how
        many records were copied.
        """
        try:
            lines = previous.read_text(encoding="utf-8").splitlines()
        except OSError:
            return 0
        copied = 0
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not 1 <= record.get("round", 0) <= rounds_done:
                continue
            self.history.append({k: float("nan") if v is None else v for k, v in record.items()})
            self._metrics.write(json.dumps(record, allow_nan=False) + "\n")
            copied += 1
        self._metrics.flush()
        return copied

    def log_round(
        self,
        round_idx: int,
        test: Mapping[str, float],
        train_loss: float,
        clients: int | None = None,
        extra: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Record an evaluated round (0-based ``round_idx``, shown 1-based) and log its accuracy line.

        ``clients`` is how many client updates the round aggregated; ``extra`` what the round's steps
        add to the record (the DP accountant's ``epsilon`` and ``delta``).
        """
        record = {
            "round": round_idx + 1,
            "test_accuracy": float(test["accuracy"]),
            "test_loss": float(test["loss"]),
            "train_loss": float(train_loss),
            "seconds": round(time.perf_counter() - self.started, 4),
        }
        if clients is not None:
            record["clients"] = clients
        record.update({k: float(v) for k, v in (extra or {}).items()})
        self.history.append(record)
        # Strict JSON: a non-finite value (train_loss of a round whose clients had no samples) is null.
        line = {k: v if math.isfinite(v) else None for k, v in record.items()}
        self._metrics.write(json.dumps(line, allow_nan=False) + "\n")
        self._metrics.flush()
        for logger in self.loggers:
            logger.log_round(line)
        if not self.args.quiet:
            privacy = (
                f" (epsilon {record['epsilon']:.3f} at delta {record['delta']:g})"
                if "epsilon" in record
                else ""
            )
            self.log.info(
                "Round %d: Training completed with accuracy %.1f%%.%s",
                record["round"],
                100 * record["test_accuracy"],
                privacy,
            )
        return record

    def round_started(self) -> float:
        """Note that a round starts; return the time to hand back to ``round_done``."""
        now = time.perf_counter()
        if self.first_round_started is None:
            self.first_round_started = now
        return now

    def round_done(self, started: float) -> None:
        """Record the wall time of a round that began at ``started`` (from ``round_started``)."""
        self.round_seconds.append(round(time.perf_counter() - started, 6))

    def timings(self) -> dict[str, Any]:
        """Return the engine, every round's seconds and the phase times, as ``timings.json`` holds them."""
        first = self.first_round_started if self.first_round_started is not None else time.perf_counter()
        phases = {"data": self.data_seconds} if self.data_seconds is not None else {}
        phases.update(setup=round(first - self.started, 6), rounds=round(sum(self.round_seconds), 6))
        return {"engine": self.engine, "round_seconds": list(self.round_seconds), "phases": phases}

    def finish(self, model_state: dict[str, torch.Tensor]) -> RunResult:
        """Save the final model and ``timings.json``, log the final line and return the run's result."""
        self._metrics.close()
        if self.args.save_model:
            atomic_torch_save(self.run_dir / "model.pt", model_state)
        final = self.history[-1] if self.history else {}
        if final:
            self.log.info(
                "Final Accuracy after Round %d: %.1f%%.", final["round"], 100 * final["test_accuracy"]
            )
        self.log.info("Run directory: %s", self.run_dir)
        timings = self.timings()
        atomic_write_text(self.run_dir / "timings.json", json.dumps(timings, indent=1) + "\n")
        summary = self.write_summary(timings, None)
        self.plot()
        names = ("model.pt", "curves.png", "config.yaml", "summary.json", "metrics.jsonl")
        artifacts = [self.run_dir / name for name in names if (self.run_dir / name).exists()]
        for logger in self.loggers:
            logger.finish(summary, artifacts)
        return RunResult(
            dict(final),
            list(self.history),
            self.run_dir,
            model_state,
            timings["engine"],
            timings["round_seconds"],
            timings["phases"],
        )

    def fail(self, error: BaseException) -> None:
        """Record why the run stopped in ``error.txt`` and ``summary.json``; the metrics so far stay."""
        self._metrics.close()
        reason = f"{type(error).__name__}: {error}"
        try:
            atomic_write_text(self.run_dir / "error.txt", reason + "\n")
            self.write_summary(self.timings(), reason)
        except OSError as exc:
            # The run's own error is the one to report; a full disk must not replace it.
            self.log.warning("Could not write the run's error into %s: %s", self.run_dir, exc)
        for logger in self.loggers:
            logger.fail(error)

    def plot(self) -> Path | None:
        """Write ``curves.png`` from the evaluated rounds (``tracking_args.plots``); return its path.

        Without matplotlib the run still succeeds: one line says how to get plots.
        """
        if not self.args.plots or not self.history:
            return None
        from fedml.plots import plot_run

        try:
            return plot_run(self.history, self.run_dir / "curves.png", self.run_dir.name)
        except ImportError as exc:
            self.log.info("No curves.png: %s", exc)
        except OSError as exc:
            self.log.warning("Could not write %s: %s", self.run_dir / "curves.png", exc)
        return None

    def summary(self, timings: Mapping[str, Any], error: str | None) -> dict[str, Any]:
        """Return what ``summary.json`` holds: what ran, how it ended, how long and how much memory."""
        import fedml

        args = self.args
        final = self.history[-1] if self.history else {}
        return {
            "name": self.run_dir.name,
            "status": "failed" if error else "finished",
            "error": error,
            "started": self.started_at,
            "wall_seconds": round(time.perf_counter() - self.started, 4),
            "phases": dict(timings["phases"]),
            "peak_memory_mb": peak_memory_mb(),
            "final_metrics": {k: v if math.isfinite(v) else None for k, v in final.items()},
            "rounds": int(final.get("round", 0)),
            "comm_round": args.comm_round,
            "stopped_early": self.stopped_early,
            "seed": args.random_seed,
            "dataset": self.dataset,
            "model": self.model,
            "algorithm": args.federated_optimizer,
            "backend": args.backend,
            "training_type": args.training_type,
            "engine": self.engine,
            "fedml_version": fedml.__version__,
            "torch_version": torch.__version__,
            "git_commit": self._git_commit.result(),
        }

    def write_summary(self, timings: Mapping[str, Any], error: str | None) -> dict[str, Any]:
        """Write ``summary.json`` into the run directory, atomically; return what it holds."""
        summary = self.summary(timings, error)
        atomic_write_text(
            self.run_dir / "summary.json", json.dumps(summary, indent=1, allow_nan=False) + "\n"
        )
        return summary


def peak_memory_mb() -> float:
    """Return this process's peak resident memory so far, in MiB (0 where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def git_commit(folder: Path) -> str | None:
    """Return the commit checked out in ``folder``'s git work tree (with ``+dirty`` for changes), or None."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _in_background(function: Any, *args: Any) -> Future[Any]:
    """Return the future of ``function(*args)`` run in a thread of its own (which ends with the call)."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedml-tracking")
    try:
        return executor.submit(function, *args)
    finally:
        executor.shutdown(wait=False)


def _new_run_dir(parent: Path, name: str) -> Path:
    try:
        return new_folder(parent, name)
    except OSError as exc:
        raise ConfigError(
            f"tracking_args.run_dir: cannot create a run directory in {parent} ({exc.strerror or exc})"
        ) from exc
