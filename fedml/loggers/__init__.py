"""Run loggers: send a run's configuration, per-round metrics and final files to TensorBoard or MLflow.

``tracking_args.loggers`` names the loggers of a run; ``create_loggers(args)`` builds them, each
importing its optional package only then (a missing one raises an ImportError naming the extra:
``pip install "fedml[tensorboard]"``, ``pip install "fedml[mlflow]"``). Every logger follows one
sequence, which the run tracker drives::

    loggers = create_loggers(args)
    try:
        for logger in loggers:
            logger.start(run_dir, redacted(args.to_dict()))
        ...
        for logger in loggers:  # once per evaluated round, with the record of metrics.jsonl
            logger.log_round(record)
        ...
        for logger in loggers:
            logger.finish(summary, [run_dir / "model.pt", run_dir / "config.yaml"])
    except BaseException as error:
        for logger in loggers:
            logger.fail(error)
        raise

``start`` fails loudly: a missing package, a bad tracking URI or an unwritable directory raise there,
before training begins. After a successful ``start`` a logging error never stops the training: it
is logged as one warning line and the logger sends nothing more in that run. ``log_round``,
``finish`` and ``fail`` do nothing on a logger that was not started or has already ended, so calling
``fail`` on every logger after any error is always safe.

Examples
--------
>>> from fedml.config import load_arguments
>>> create_loggers(load_arguments(overrides={"loggers": []}))
[]
>>> LOGGERS.names()
['mlflow', 'tensorboard']

"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fedml.core.registry import Registry

log = logging.getLogger("fedml.loggers")


@runtime_checkable
class RunLogger(Protocol):
    """Sends one run's records to an experiment-tracking tool.

    A logger records one run: ``start`` once, ``log_round`` per evaluated round, then ``finish`` or
    ``fail``.
    """

    def start(self, run_dir: Path, config: Mapping[str, Mapping[str, Any]]) -> None:
        """Open the run for the run directory ``run_dir``; ``config`` is the redacted configuration.

        Raises
        ------
        ConfigError
            If the tool cannot be reached or written to as configured.

        """
        ...

    def log_round(self, record: Mapping[str, float | None]) -> None:
        """Log one evaluated round's metrics at step ``record["round"]``; None and NaN values are skipped."""
        ...

    def finish(self, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        """Log the final ``summary`` and the files ``artifacts`` (missing ones skipped); end the run."""
        ...

    def fail(self, error: BaseException) -> None:
        """End the run as failed because of ``error``."""
        ...


LOGGERS: Registry[Callable[[Any], RunLogger]] = Registry("logger", key="tracking_args.loggers")
"""Logger factories by ``tracking_args.loggers`` name; a factory takes the run's arguments."""


def register_logger(name: str, factory: Callable[[Any], RunLogger] | str, extra: str | None = None) -> None:
    """Make a logger available as ``tracking_args.loggers: [name]``.

    Parameters
    ----------
    name
        The logger's name, e.g. ``"tensorboard"``.
    factory
        A callable taking the run's arguments and returning a ``RunLogger``, or ``"module:attribute"``
        naming one, imported on first use so that the logger's package loads only when it is chosen.
    extra
        The pip extra that installs the logger's package, named in the error when it is missing.

    """
    LOGGERS.register(name, factory, extra=extra)


def create_loggers(args: Any) -> list[RunLogger]:
    """Build the loggers named by ``args.loggers``, in order, each once.

    Parameters
    ----------
    args
        The run's arguments (``fedml.config.Arguments``); each factory reads the keys it needs, such
        as ``run_dir``, ``mlflow_tracking_uri`` and ``mlflow_experiment``.

    Raises
    ------
    ConfigError
        If a name is not a registered logger; the message lists the valid ones.
    ImportError
        If a logger's package is missing; the message names the extra that installs it.

    """
    return [LOGGERS.get(name)(args) for name in dict.fromkeys(args.loggers)]


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return ``mapping`` with nested mappings flattened into dotted keys.

    Examples
    --------
    >>> flatten({"train_args": {"learning_rate": 0.1, "opt": {"beta": 0.9}}})
    {'train_args.learning_rate': 0.1, 'train_args.opt.beta': 0.9}

    """
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def finite(value: Any) -> float | None:
    """Return ``value`` as a float if it is a finite real number (not a bool), else None.

    Examples
    --------
    >>> finite(3), finite(float("nan")), finite(None), finite(True), finite("0.5")
    (3.0, None, None, None, None)

    """
    # numbers.Real, so numpy scalars count too.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def round_of(record: Mapping[str, float | None]) -> int:
    """Return ``record["round"]`` as an int, the step of the record's metrics.

    Raises
    ------
    ValueError
        If the record has no finite ``round``.

    """
    number = finite(record.get("round"))
    if number is None:
        raise ValueError(f"a round record needs a finite 'round', got {record.get('round')!r}")
    return int(number)


def clip(text: str, limit: int) -> str:
    """Return ``text`` cut to at most ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Guard:
    """Keeps a logging error after ``start`` from stopping the run: one warning, then nothing more is sent.

    Parameters
    ----------
    name
        The logger's name, for the warning line.

    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.broken = False

    def run(self, what: str, action: Callable[[], object], *, always: bool = False) -> bool:
        """Call ``action``; on an error, warn once and mark the logger broken. Return whether it ran.

        ``always`` runs ``action`` even on a broken logger (closing files, ending the run), still
        warning at most once in all.
        """
        if self.broken and not always:
            return False
        try:
            action()
        except Exception as exc:  # a tracking tool's hiccup must never end the training
            if not self.broken:
                log.warning(
                    "%s logger: could not %s (%s: %s); it logs nothing more in this run",
                    self.name,
                    what,
                    type(exc).__name__,
                    clip(str(exc), 300),
                )
            self.broken = True
            return False
        return True


register_logger("tensorboard", "fedml.loggers.tensorboard:from_args", extra="tensorboard")
register_logger("mlflow", "fedml.loggers.mlflow:from_args", extra="mlflow")
