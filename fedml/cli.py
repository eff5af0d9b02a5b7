"""The ``fedml`` command line: simulate, run, server, client, launch, certs, devices, env, runs, jobs, data.

User errors print one clear message and exit with a code by kind: 2 for configuration errors, 3 for
combinations not built yet, 1 for any other fedml error.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import time
from collections.abc import Callable, Sequence
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
  devices    write per-device broker credentials for a cross-device deployment
  env        print versions of fedml, Python, torch and the optional backends
  runs       list, show, compare and plot the run directories under tracking_args.run_dir
  data       print per-client sample counts and label histograms of the configured partition
  jobs       list the prebuilt recipes (dataset x model x algorithm) and run one by name
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
    "devices": """usage: fedml devices credentials --count N --out DIR [--server-user U] [--host H] [--port P]
                                  [--insecure] [--cf FILE]

Write per-device MQTT credentials into DIR, every file owner-only: passwd (a Mosquitto password
file with the server's user, default fedml-server, and devices 1..N, each logging in as its id),
acl (each device reads only its own task topic and writes only its own update topic),
mosquitto.conf (a snippet using both), server.yaml (the server's comm_args) and
devices/device-N.yaml with devices/device-N.password (device N's edge configuration: its id, the
broker at --host/--port, default 127.0.0.1:8883 with TLS, and its password file). With --cf FILE
each device's YAML is that job configuration plus its own comm_args. docs/cross_device.md has the
whole recipe.
""",
    "env": """usage: fedml env

Print the versions of fedml, Python and torch, and which optional backends are installed.
""",
    "runs": """usage: fedml runs list [--run_dir DIR | --cf FILE]
       fedml runs show RUN
       fedml runs compare RUN RUN ... [--out FILE]
       fedml runs plot RUN [--out FILE]

Look back at the run directories under tracking_args.run_dir: ./runs unless --run_dir DIR or the
--cf FILE says otherwise (every subcommand takes either). RUN is a run directory's path, its name, or
a prefix or part of exactly one name there.
  list     one line per run, newest first: date, dataset, model, algorithm, backend, rounds,
           final accuracy, wall time and status
  show     one run: config highlights, final metrics, timings and every evaluated round
  compare  runs side by side (what differs in their config too), and their test accuracy and loss
           overlaid in one PNG: --out FILE, default compare-<timestamp>.png next to the first run
  plot     a run's curves as a PNG: --out FILE, default curves.png in the run directory
Plots need matplotlib: pip install "fedml[plots]".
""",
    "data": """usage: fedml data stats [--cf FILE] [--out DIR] [key=value ...]

Load the configured dataset and partition (data_args, client_num_in_total, random_seed) and print
each client's training and test samples and training-label histogram: one row per client, or the
largest and smallest when there are many. Writes data_stats.txt, data_stats.json and a plot,
data_stats.png, into --out DIR, default a new <tracking_args.run_dir>/<timestamp>-data-<dataset>/.
""",
    "jobs": """usage: fedml jobs list
       fedml jobs show NAME
       fedml jobs run NAME [key=value ...]

The prebuilt jobs: ready recipes in configs/jobs/, one YAML file each (docs/jobs.md).
  list     one row per recipe: dataset, model, algorithm, backend, rounds, clients, the accuracy to
           expect and the command; then each recipe's accuracy source and the data files it reads
  show     print a recipe's file
  run      run a recipe; key=value overrides apply on top of its file (comm_round=5,
           data_cache_dir=DIR), as on fedml run
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
        "devices": _devices,
        "env": _env,
        "runs": _runs,
        "data": _data,
        "jobs": _jobs,
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
    model = fedml.model.create(args, output_dim, dataset.input_shape)
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


def _devices(argv: list[str]) -> None:
    from fedml.cross_device.credentials import SERVER_USER, generate_credentials, write_credentials

    parser = argparse.ArgumentParser(prog="fedml devices credentials", add_help=False)
    parser.add_argument("action", choices=["credentials"])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--server-user", dest="server_user", default=SERVER_USER)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--cf", "--config_file", dest="config_file")
    known, rest = _parse(parser, argv)
    if rest:
        raise ConfigError(f"fedml devices credentials: unexpected arguments {rest}")
    port = known.port or (1883 if known.insecure else 8883)
    credentials = generate_credentials(known.count, known.server_user)
    job = Path(known.config_file) if known.config_file else None
    files = write_credentials(Path(known.out), credentials, known.host, port, not known.insecure, job)
    sys.stdout.write(
        f"Wrote credentials for {known.count} device(s) and the server ({known.server_user}) into "
        f"{known.out}: {', '.join(name for name in files if not name.startswith('device-'))} and "
        f"devices/device-N.yaml\n"
    )


def _parse(
    parser: argparse.ArgumentParser, argv: list[str], intermixed: bool = False
) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv`` with ``parser``; a missing or bad option is a ConfigError, not argparse's exit.

    ``intermixed`` lets options come between positional arguments (``compare A --out F B``).
    """
    parser.exit_on_error = False
    try:
        if intermixed:
            return parser.parse_known_intermixed_args(argv)
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
    extras = (
        ("mpi", "mpi4py"),
        ("grpc", "grpc"),
        ("mqtt", "paho.mqtt"),
        ("plots", "matplotlib"),
        ("tensorboard", "tensorboard"),
        ("mlflow", "mlflow"),
    )
    for extra, module in extras:
        found = importlib.util.find_spec(module.split(".")[0]) is not None
        lines.append(f"{module}: {'installed' if found else f'missing (pip install fedml[{extra}])'}")
    from fedml.core.comm.broker import INSTALL_HINT, find_mosquitto

    broker = find_mosquitto()
    lines.append(f"mosquitto: {broker or f'missing ({INSTALL_HINT})'}")
    sys.stdout.write("\n".join(lines) + "\n")


RUNS_ACTIONS = {"list": (0, 0), "show": (1, 1), "compare": (2, None), "plot": (1, 1)}
"""``fedml runs`` subcommand -> the fewest and most RUN arguments it takes (None: no limit)."""


def _runs(argv: list[str]) -> None:
    from fedml.plots import plot_compare, plot_run
    from fedml.run_report import compare_report, runs_table, show_report
    from fedml.runs import find_runs, read_run, resolve_run

    action = argv[0] if argv else ""
    if action not in RUNS_ACTIONS:
        raise ConfigError(f"fedml runs: expected one of {', '.join(RUNS_ACTIONS)}, got {action!r}")
    parser = argparse.ArgumentParser(prog=f"fedml runs {action}", add_help=False)
    parser.add_argument("specs", nargs="*")
    parser.add_argument("--run_dir")
    parser.add_argument("--cf", "--config_file", dest="config_file")
    if action in {"compare", "plot"}:
        parser.add_argument("--out")
    known, rest = _parse(parser, argv[1:], intermixed=True)
    if rest:
        raise ConfigError(f"fedml runs {action}: unexpected arguments {rest}; see fedml runs --help")
    fewest, most = RUNS_ACTIONS[action]
    if len(known.specs) < fewest or (most is not None and len(known.specs) > most):
        wanted = "no RUN" if most == 0 else "one RUN" if most == 1 else f"{fewest} or more RUNs"
        raise ConfigError(f"fedml runs {action} takes {wanted}, got {' '.join(argv[1:]) or 'none'}")
    run_dir = _runs_dir(known.run_dir, known.config_file)
    if action == "list":
        runs = find_runs(run_dir)
        sys.stdout.write(runs_table(runs) + "\n" if runs else f"no runs in {run_dir}\n")
        for run in runs:
            if run.status == "unreadable":
                sys.stderr.write(f"fedml: warning: {run.error}\n")
        return
    runs = [read_run(resolve_run(run_dir, spec)) for spec in known.specs]
    if action == "show":
        sys.stdout.write(show_report(runs[0]) + "\n")
    elif action == "compare":
        sys.stdout.write(compare_report(runs) + "\n")
        out = (
            Path(known.out)
            if known.out
            else runs[0].path.parent / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.png"
        )
        names: dict[str, list[dict[str, object]]] = {}
        for run in runs:
            label = run.name if run.name not in names else f"{run.name} ({run.path.parent})"
            names[label] = run.history
        sys.stdout.write(f"plot: {_plot(lambda: plot_compare(names, out), out)}\n")
    else:
        run = runs[0]
        if not run.history:
            raise ConfigError(f"{run.path / 'metrics.jsonl'}: no evaluated rounds to plot")
        out = Path(known.out) if known.out else run.path / "curves.png"
        sys.stdout.write(f"{_plot(lambda: plot_run(run.history, out, run.name), out)}\n")


def _data(argv: list[str]) -> None:
    import fedml
    from fedml.data.stats import data_stats, stats_table, write_stats

    if not argv or argv[0] != "stats":
        raise ConfigError(
            f"fedml data: expected stats, got {argv[0] if argv else 'nothing'}; see fedml data --help"
        )
    parser = argparse.ArgumentParser(prog="fedml data stats", add_help=False)
    parser.add_argument("--out")
    known, rest = _parse(parser, argv[1:])
    args = fedml.init(rest)
    dataset, _ = fedml.data.load(args)
    stats = data_stats(dataset)
    sys.stdout.write(stats_table(stats) + "\n")
    out = Path(known.out).expanduser() if known.out else None
    folder = _plot(
        lambda: write_stats(stats, Path(args.run_dir).expanduser(), out), out or Path(args.run_dir)
    )
    sys.stdout.write(f"plot: {folder / 'data_stats.png'}\n")


def _jobs(argv: list[str]) -> None:
    from fedml.jobs import find_jobs, get_job, jobs_table, run_job

    action, rest = (argv[0], argv[1:]) if argv else ("", [])
    if action == "list":
        if rest:
            raise ConfigError(f"fedml jobs list: unexpected arguments {rest}; see fedml jobs --help")
        sys.stdout.write(jobs_table(find_jobs()) + "\n")
    elif action in {"show", "run"}:
        if not rest or "=" in rest[0] or rest[0].startswith("-"):
            raise ConfigError(f"fedml jobs {action} needs a recipe NAME first; fedml jobs list shows them")
        if action == "show":
            if rest[1:]:
                raise ConfigError(f"fedml jobs show: unexpected arguments {rest[1:]}")
            sys.stdout.write(get_job(rest[0]).path.read_text(encoding="utf-8"))
        else:
            run_job(rest[0], rest[1:])
    else:
        raise ConfigError(f"fedml jobs: expected list, show or run, got {action or 'nothing'!r}")


def _runs_dir(run_dir: str | None, config_file: str | None) -> Path:
    """Return ``--run_dir``, else the ``--cf`` file's tracking_args.run_dir, else that key's default."""
    if run_dir is None and config_file is not None:
        from fedml.config import load_arguments

        run_dir = load_arguments(config_file).run_dir
    if run_dir is None:
        from fedml.config.sections import TrackingArgs

        run_dir = TrackingArgs.model_fields["run_dir"].default
    return Path(run_dir).expanduser()


def _plot(draw: Callable[[], Path], out: Path) -> Path:
    """Return ``draw()``; a missing matplotlib or an unwritable ``out`` is one line, not a traceback."""
    try:
        return draw()
    except ImportError as exc:
        raise FedMLError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the plot ({exc.strerror or exc})") from exc
