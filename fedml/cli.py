"""The ``fedml`` command line: ``fedml simulate``, ``fedml run`` and ``fedml env``.

User errors print one clear message and exit with a code by kind: 2 for configuration errors, 3 for
combinations not built yet, 1 for any other fedml error.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from collections.abc import Sequence

from fedml.errors import ConfigError, FedMLError, NotSupportedError

USAGE = """usage: fedml <command> [--cf FILE] [key=value ...]

commands:
  simulate   run a simulation (FedAvg on MNIST by default); --cf and key=value override the defaults
  run        run what the config file's common_args.training_type says, the five-step way
  env        print versions of fedml, Python, torch and the optional backends
"""

COMMAND_USAGE = {
    "simulate": """usage: fedml simulate [--cf FILE] [key=value ...]

Run a simulation in this process (backend sp unless the file or an override says MPI or NCCL):
FedAvg on MNIST with 10 clients and 50 rounds unless told otherwise. Overrides are YAML scalars,
flat (comm_round=5) or dotted (train_args.learning_rate=0.1); docs/configuration.md lists every key.
""",
    "run": """usage: fedml run --cf FILE [--rank N] [--role server|client] [key=value ...]

Run what the file's common_args.training_type and comm_args.backend say, the five-step way
(fedml.init, data.load, model.create, FedMLRunner(...).run()).
""",
    "env": """usage: fedml env

Print the versions of fedml, Python and torch, and which optional backends are installed.
""",
}
"""``fedml <command> --help``."""

EXIT_CODES: tuple[tuple[type[FedMLError], int], ...] = (
    (ConfigError, 2),
    (NotSupportedError, 3),
    (FedMLError, 1),
)
"""Exit code for each kind of user error, checked in order."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        sys.stdout.write(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    commands = {"simulate": _simulate, "run": _run, "env": _env}
    if command not in commands:
        sys.stderr.write(f"fedml: error: unknown command {command!r}\n{USAGE}")
        return 2
    if {"-h", "--help"} & set(rest):
        sys.stdout.write(COMMAND_USAGE[command])
        return 0
    try:
        commands[command](rest)
    except FedMLError as exc:
        code = next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
        sys.stderr.write(f"fedml: error: {exc}\n")
        return code
    return 0


def _simulate(argv: list[str]) -> None:
    import fedml

    fedml.run_simulation(argv=argv)


def _run(argv: list[str]) -> None:
    import fedml

    args = fedml.init(argv)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()


def _env(argv: list[str]) -> None:
    import torch

    import fedml

    lines = [
        f"fedml {fedml.__version__}",
        f"python {platform.python_version()} ({platform.platform()})",
        f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}",
    ]
    for extra, module in (("mpi", "mpi4py"), ("grpc", "grpc"), ("mqtt", "paho.mqtt")):
        found = importlib.util.find_spec(module.split(".")[0]) is not None
        lines.append(f"{module}: {'installed' if found else f'missing (pip install fedml[{extra}])'}")
    sys.stdout.write("\n".join(lines) + "\n")
