"""fedml: federated learning with one line to start and real systems underneath.

Examples
--------
The default simulation (FedAvg, MNIST, 10 clients, 50 rounds)::

    import fedml
    fedml.run_simulation()

The five-step pattern, driven by a YAML file given as ``--cf file.yaml``::

    args = fedml.init()
    device = fedml.device.get_device(args)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    fedml.FedMLRunner(args, device, dataset, model).run()

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedml import data, device, model
from fedml.config import Arguments, load_arguments, parse_command_line
from fedml.cross_device.edge import edge_runner, init_edge
from fedml.errors import ConfigError, FedMLError, NotSupportedError
from fedml.ml import ClientTrainer, ServerAggregator
from fedml.runner import FedMLRunner
from fedml.tracking import RunResult, configure_logging

__version__ = "0.1.0"


def init(
    argv: Sequence[str] | None = None,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Arguments:
    """Read the command line and the YAML file it names, validate them and return the run's arguments.

    Parameters
    ----------
    argv
        Command-line arguments; ``None`` reads ``sys.argv[1:]``. Understands ``--cf FILE``, ``--rank``,
        ``--role``, ``--run_id`` and ``key=value`` overrides.
    config_file
        A YAML file to use instead of ``--cf``.
    overrides
        Keys to set after the file and the command line (flat ``comm_round`` or dotted
        ``train_args.comm_round``).

    Raises
    ------
    ConfigError
        For an unreadable file, unknown keys, bad values or impossible combinations, all listed at once.

    Notes
    -----
    The only process-wide effect is ``configure_logging``: if the application has not configured
    logging, fedml's INFO lines are printed to stdout. No global seed is set; randomness flows from
    ``random_seed`` through explicit generators.

    """
    cli_file, identity, cli_overrides = parse_command_line(argv)
    merged = {**cli_overrides, **(overrides or {})}
    args = load_arguments(config_file if config_file is not None else cli_file, merged, **identity)
    configure_logging(args.log_level)
    return args


def run_simulation(
    backend: str | None = None,
    *,
    argv: Sequence[str] | None = None,
    config_file: str | Path | None = None,
    **overrides: Any,
) -> RunResult:
    """Run a simulation in one call: FedAvg on MNIST with 10 clients and 50 rounds unless told otherwise.

    Reads ``--cf FILE`` and ``key=value`` overrides from the command line like ``init``; keyword
    overrides (``comm_round=5``) and ``backend`` apply on top.

    Returns
    -------
    RunResult
        Final metrics, per-round history and the run directory.

    Examples
    --------
    Two rounds, printing a line per round and writing the run directory under ``./runs``::

        result = fedml.run_simulation(argv=[], comm_round=2)
        result.final_metrics["test_accuracy"]  # about 0.8

    """
    _, _, from_command_line = parse_command_line(argv)
    for key, value in [*from_command_line.items(), *overrides.items()]:
        if key.rpartition(".")[2] == "training_type" and value != "simulation":
            raise ConfigError(
                f"{key}={value} contradicts run_simulation (fedml simulate), which runs a simulation; "
                "use fedml.init() and FedMLRunner (fedml run --cf FILE) for other training types"
            )
    extra: dict[str, Any] = {"training_type": "simulation", **overrides}
    if backend is not None:
        extra["backend"] = backend
    args = init(argv, config_file=config_file, overrides=extra)
    dataset, output_dim = data.load(args)
    net = model.create(args, output_dim, dataset.input_shape)
    return FedMLRunner(args, device.get_device(args), dataset, net).run()


def run_cross_silo_server(
    *, argv: Sequence[str] | None = None, config_file: str | Path | None = None, **overrides: Any
) -> RunResult:
    """Run the server of a cross-silo job in this process (rank 0) until its last round.

    Reads ``--cf FILE`` and ``key=value`` overrides from the command line like ``init``; the run is
    ``training_type: cross_silo`` whatever the file says about the role. Start the silos with
    ``run_cross_silo_client`` (or ``fedml client``); docs/cross_silo.md has the whole recipe.

    Returns
    -------
    RunResult
        Final metrics, per-round history and the run directory.

    """
    return _run_cross_silo("server", 0, argv, config_file, overrides)


def run_cross_silo_client(
    rank: int | None = None,
    *,
    argv: Sequence[str] | None = None,
    config_file: str | Path | None = None,
    **overrides: Any,
) -> RunResult:
    """Run silo ``rank`` (``--rank N`` on the command line when omitted) of a cross-silo job.

    The silo joins the server, trains its data when asked and returns when the server ends the run.

    Returns
    -------
    RunResult
        The run's result as the server reported it.

    """
    return _run_cross_silo("client", rank, argv, config_file, overrides)


def _run_cross_silo(
    role: str,
    rank: int | None,
    argv: Sequence[str] | None,
    config_file: str | Path | None,
    overrides: Mapping[str, Any],
) -> RunResult:
    cli_file, identity, cli_overrides = parse_command_line(argv)
    identity["role"] = role
    if rank is not None:
        identity["rank"] = rank
    merged = {**cli_overrides, **overrides, "training_type": "cross_silo"}
    args = load_arguments(config_file if config_file is not None else cli_file, merged, **identity)
    configure_logging(args.log_level)
    dataset, output_dim = data.load(args)
    net = model.create(args, output_dim, dataset.input_shape)
    return FedMLRunner(args, device.get_device(args), dataset, net).run()


__all__ = [
    "Arguments",
    "ClientTrainer",
    "ConfigError",
    "FedMLError",
    "FedMLRunner",
    "NotSupportedError",
    "RunResult",
    "ServerAggregator",
    "__version__",
    "data",
    "device",
    "edge_runner",
    "init",
    "init_edge",
    "model",
    "run_cross_silo_client",
    "run_cross_silo_server",
    "run_simulation",
]
