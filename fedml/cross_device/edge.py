"""The edge side: ``fedml.init_edge()`` and ``fedml.edge_runner(args).run()``, the seed's two lines.

An edge device needs little configuration: which device it is (``--device_id N``, also ``--rank N``),
where the broker is and its credentials (``comm_args.host``, ``port``, ``broker_username``,
``broker_password``), and the data and model settings it shares with the server (``--cf`` may give
them all). Its data: the dataset the runner is given (a dataset of one client is the device's own
data), or for demos partition ``N - 1`` of the configured dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedml.config import Arguments, load_arguments, parse_command_line
from fedml.errors import ConfigError
from fedml.tracking import RunResult, configure_logging


def init_edge(
    argv: Sequence[str] | None = None,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Arguments:
    """Read an edge device's configuration: ``--device_id N`` (or ``--rank N``), ``--cf``, ``key=value``.

    The run is ``training_type: cross_device`` and this process a client. Without ``--device_id`` the
    configuration's ``comm_args.device_id`` says which device this is; ``comm_args.broker_password_file``
    gives the broker password from a file (``fedml devices credentials`` writes both).

    Raises
    ------
    ConfigError
        Without a device id of 1 or more, or when the password file cannot be read.

    """
    tokens = list(argv) if argv is not None else None
    tokens = _device_id_as_rank(tokens)
    cli_file, identity, cli_overrides = parse_command_line(tokens)
    identity["role"] = "client"
    merged = {**cli_overrides, **(overrides or {}), "training_type": "cross_device"}
    args = load_arguments(config_file if config_file is not None else cli_file, merged, **identity)
    if args.rank < 1 and args.device_id is not None:
        args.rank = args.device_id
    if args.rank < 1:
        raise ConfigError("an edge device needs --device_id N (1, 2, ...): which device this process is")
    if args.broker_password_file:
        path = Path(args.broker_password_file).expanduser()
        try:
            args.broker_password = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"comm_args.broker_password_file: cannot read {path}: {exc.strerror}") from exc
    configure_logging(args.log_level)
    return args


def _device_id_as_rank(argv: list[str] | None) -> list[str]:
    import sys

    tokens = list(sys.argv[1:] if argv is None else argv)
    out = []
    for token in tokens:
        if token == "--device_id":
            out.append("--rank")
        elif token.startswith("--device_id="):
            out.append("--rank=" + token.partition("=")[2])
        else:
            out.append(token)
    return out


class EdgeRunner:
    """Runs one edge device: loads its data and model, serves the server's rounds until it finishes.

    Parameters
    ----------
    args
        From ``init_edge``.
    dataset
        The device's data; default: ``fedml.data.load(args)`` (partition ``device_id - 1``).
    model
        The model; default: ``fedml.model.create(args, output_dim)``.

    """

    def __init__(self, args: Any, dataset: Any = None, model: Any = None) -> None:
        self.args = args
        self.dataset = dataset
        self.model = model

    def run(self) -> RunResult:
        """Connect to the broker, join, train when asked, and return the run's result once it ends."""
        import fedml

        args = self.args
        dataset, model = self.dataset, self.model
        if dataset is None:
            dataset, output_dim = fedml.data.load(args)
        else:
            output_dim = dataset.output_dim
        if model is None:
            model = fedml.model.create(args, output_dim)
        return fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()


def edge_runner(args: Any, dataset: Any = None, model: Any = None) -> EdgeRunner:
    """Return the runner of the edge device ``args`` describes (``init_edge``)."""
    return EdgeRunner(args, dataset, model)
