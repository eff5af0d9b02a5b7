"""The ``fedml`` command line: simulate, run, server, client, launch, certs and env.

User errors print one clear message and exit with a code by kind: 2 for configuration errors, 3 for
combinations not built yet, 1 for any other fedml error.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from fedml.errors import ConfigError, FedMLError, NotSupportedError

USAGE = """usage: fedml <command> [--cf FILE] [key=value ...]

commands:
  simulate   run a simulation (FedAvg on MNIST by default); --cf and key=value override the defaults
  run        run what the config file's common_args.training_type says, the five-step way
  server     run the server of a cross-silo job (rank 0)
  client     run silo --rank N of a cross-silo job
  launch     start a server and --clients N silos on this machine, with prefixed logs
  certs      make a CA and TLS certificates for a test deployment
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
    "server": """usage: fedml server --cf FILE [key=value ...]

Run the server of a cross-silo job in this process: it waits for the silos (comm_args.backend GRPC by
default, listening on comm_args.host:port, 127.0.0.1:8890 unless set), runs every round and writes the
run directory. docs/cross_silo.md has the whole recipe.
""",
    "client": """usage: fedml client --cf FILE --rank N [key=value ...]

Run silo N (1, 2, ...) of a cross-silo job: it connects to the server, trains its data when asked and
exits when the server ends the run.
""",
    "launch": """usage: fedml launch --cf FILE --clients N [key=value ...]

Start the server and N silos of a cross-silo job as processes on this machine, print their output
with a prefix per process, and exit with the server's status. The job gets a free port, a fresh run id
and auth token; with comm_args.backend MQTT and no broker configured (comm_args.host/port) it starts a
Mosquitto of its own on a free loopback port.
""",
    "certs": """usage: fedml certs --out DIR [--host HOST ...] [--client NAME ...] [--days N]

Write a CA (ca.pem, ca.key), a server certificate valid for each --host (server.pem, server.key;
default 127.0.0.1 and localhost) and a client certificate per --client NAME (NAME.pem, NAME.key) for
mutual TLS. Point comm_args.tls_ca_file, tls_cert_file and tls_key_file at them.
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
    commands = {
        "simulate": _simulate,
        "run": _run,
        "server": _server,
        "client": _client,
        "launch": _launch,
        "certs": _certs,
        "env": _env,
    }
    if command not in commands:
        sys.stderr.write(f"fedml: error: unknown command {command!r}\n{USAGE}")
        return 2
    if {"-h", "--help"} & set(rest):
        sys.stdout.write(COMMAND_USAGE[command])
        return 0
    try:
        return commands[command](rest) or 0
    except FedMLError as exc:
        code = next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
        sys.stderr.write(f"fedml: error: {exc}\n")
        return code


def _simulate(argv: list[str]) -> None:
    import fedml

    fedml.run_simulation(argv=argv)


def _run(argv: list[str]) -> None:
    import fedml

    args = fedml.init(argv)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()


def _server(argv: list[str]) -> None:
    import fedml

    fedml.run_cross_silo_server(argv=argv)


def _client(argv: list[str]) -> None:
    import fedml

    if not any(token == "--rank" or token.startswith("--rank=") for token in argv):
        raise ConfigError("fedml client needs --rank N (1, 2, ...): which silo this process is")
    fedml.run_cross_silo_client(argv=argv)


def _launch(argv: list[str]) -> int:
    from fedml.launcher import launch

    parser = argparse.ArgumentParser(prog="fedml launch", add_help=False)
    parser.add_argument("--cf", "--config_file", dest="config_file", required=True)
    parser.add_argument("--clients", type=int, required=True)
    known, rest = _parse(parser, argv)
    return launch(known.config_file, known.clients, rest)


def _certs(argv: list[str]) -> None:
    from fedml.core.comm.certs import make_deployment

    parser = argparse.ArgumentParser(prog="fedml certs", add_help=False)
    parser.add_argument("--out", required=True)
    parser.add_argument("--host", action="append", dest="hosts")
    parser.add_argument("--client", action="append", dest="clients", default=[])
    parser.add_argument("--days", type=int, default=365)
    known, rest = _parse(parser, argv)
    if rest:
        raise ConfigError(f"fedml certs: unexpected arguments {rest}")
    hosts = known.hosts or ["127.0.0.1", "localhost"]
    files = make_deployment(Path(known.out), hosts, known.clients, days=known.days)
    for name, pair in files.items():
        sys.stdout.write(f"{name}: {pair.cert} {pair.key}\n")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` with ``parser``; a missing or bad option is a ConfigError, not argparse's exit."""
    parser.exit_on_error = False
    try:
        return parser.parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ConfigError(f"{parser.prog}: {exc}; see {parser.prog} --help") from None


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
