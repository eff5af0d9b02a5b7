"""``fedml launch``: a server and N clients of a networked job as processes on this machine.

The job gets what separate processes must share and a user should not have to invent: a free port,
a fresh run id and auth token, and with MQTT and no broker configured a Mosquitto of its own. These go
into a job configuration file (the user's file plus those keys, readable by the owner only), so no
secret appears on a command line. Each process's output is printed line by line with a prefix
(``[server]``, ``[client 2]``); the launch ends with the server's exit status, and no process is left
running.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from fedml.config import load_arguments, parse_command_line
from fedml.core.comm.broker import BrokerTLS, MosquittoBroker, free_port
from fedml.core.files import atomic_write_text
from fedml.errors import ConfigError

if TYPE_CHECKING:
    from fedml.cross_device.credentials import Credentials

CLIENT_GRACE = 30.0
"""Seconds the clients get to finish after the server has exited, before they are stopped."""

STOP_GRACE = 5.0
"""Seconds a process gets to exit after SIGTERM before it is killed."""


def launch(config_file: str, clients: int, argv: Sequence[str] = (), out: IO[str] | None = None) -> int:
    """Run a networked job (server and ``clients`` silos) on this machine; return the server's exit code.

    Parameters
    ----------
    config_file
        The job's YAML (``common_args.training_type`` ``cross_silo``).
    clients
        How many silos to start (ranks ``1 .. clients``).
    argv
        ``key=value`` overrides given to every process.
    out
        Where the prefixed lines go (default: standard output).

    Raises
    ------
    ConfigError
        For a configuration that cannot run as a local job (not networked, too few clients).

    """
    stream = out or sys.stdout
    _, _, overrides = parse_command_line(list(argv))
    args = load_arguments(config_file, overrides)
    if args.training_type == "simulation":
        raise ConfigError(
            f"{config_file}: common_args.training_type is simulation; fedml launch starts networked jobs "
            "(cross_silo); run a simulation with: fedml simulate --cf FILE"
        )
    if clients < args.client_num_per_round:
        raise ConfigError(
            f"--clients {clients}: the job needs at least train_args.client_num_per_round "
            f"{args.client_num_per_round} clients"
        )
    raw = _read(Path(config_file))
    with ExitStack() as stack:
        if threading.current_thread() is threading.main_thread():
            # SIGTERM unwinds like Ctrl-C, so the processes and the broker are stopped on the way out.
            previous = signal.signal(signal.SIGTERM, _terminated)
            stack.callback(signal.signal, signal.SIGTERM, previous)
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedml-launch-")))
        job = _job_config(raw, args, clients, overrides)
        # Cross-device: every device logs in with its own credentials, kept to its topics by the ACL.
        devices: dict[str, str] = {}
        if args.backend == "MQTT" and not _configured(raw, overrides, "comm_args", "host", "port"):
            credentials = None
            if args.training_type == "cross_device":
                from fedml.cross_device.credentials import generate_credentials

                credentials = generate_credentials(clients)
                devices = credentials.devices
            broker = stack.enter_context(_broker(credentials))
            job["comm_args"].update(
                host=broker.host,
                port=broker.port,
                broker_username=broker.username,
                broker_password=broker.password,
            )
        job_file = folder / "job.yaml"
        atomic_write_text(job_file, yaml.safe_dump(job, sort_keys=False))
        run_id = f"launch-{secrets.token_hex(4)}"

        def command(cf: Path) -> list[str]:
            return [sys.executable, "-m", "fedml", "run", "--cf", str(cf), "--run_id", run_id, *argv]

        server = _Process([*command(job_file), "--rank", "0", "--role", "server"], "server", stream)
        silos = []
        try:
            for rank in range(1, clients + 1):
                client_file = job_file
                if devices:
                    client_file = folder / f"device-{rank}.yaml"
                    device = {**job, "comm_args": {**job["comm_args"], "broker_username": str(rank)}}
                    device["comm_args"]["broker_password"] = devices[str(rank)]
                    atomic_write_text(client_file, yaml.safe_dump(device, sort_keys=False))
                silos.append(
                    _Process(
                        [*command(client_file), "--rank", str(rank), "--role", "client"],
                        f"client {rank}",
                        stream,
                    )
                )
        finally:
            code = _wait(server, silos)
        return code


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _read(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {name: dict(section or {}) for name, section in data.items()}


def _configured(raw: dict[str, Any], overrides: dict[str, Any], section: str, *keys: str) -> bool:
    """Return whether the file's ``section`` or an override sets any of ``keys``."""
    flat = {key.rpartition(".")[2] for key in overrides}
    return any(key in raw.get(section, {}) or key in flat for key in keys)


def _job_config(raw: dict[str, Any], args: Any, clients: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Return the user's configuration plus what the job's processes must share."""
    job = {name: dict(section) for name, section in raw.items()}
    comm = job.setdefault("comm_args", {})
    if args.backend == "GRPC" and not _configured(raw, overrides, "comm_args", "port"):
        comm["port"] = free_port()
    if not _configured(raw, overrides, "comm_args", "auth_token", "auth_token_file"):
        comm["auth_token"] = secrets.token_urlsafe(24)
    if not _configured(raw, overrides, "train_args", "client_num_in_total"):
        job.setdefault("train_args", {})["client_num_in_total"] = clients
    return job


@contextmanager
def _broker(credentials: Credentials | None = None) -> Iterator[MosquittoBroker]:
    """Start a Mosquitto for the job: TLS with the development CA, a free loopback port, a new password.

    With ``credentials`` (cross-device) the server logs in as their server user and each device as
    its id with its own password, under ``fedml_acl``.
    """
    from fedml.core.comm.certs import dev_certificates

    dev = dev_certificates()
    tls = BrokerTLS(dev.server.cert, dev.server.key, dev.ca)
    logins: dict[str, Any] = {}
    if credentials is not None:
        logins = {
            "username": credentials.server_user,
            "password": credentials.server_password,
            "devices": credentials.devices,
        }
    with MosquittoBroker(tls=tls, **logins) as broker:
        yield broker


class _Process:
    """A started process and the thread that relays its output."""

    def __init__(self, command: list[str], name: str, out: IO[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.popen = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
        )
        self.relay = threading.Thread(target=_relay, args=(self.popen, f"[{name}] ", out), daemon=True)
        self.relay.start()

    def stop(self) -> None:
        """Terminate the process if it still runs (kill it after ``STOP_GRACE``), then flush its output."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.relay.join(STOP_GRACE)


_PRINT = threading.Lock()


def _relay(process: subprocess.Popen[str], prefix: str, out: IO[str]) -> None:
    if process.stdout is None:
        return
    for line in process.stdout:
        with _PRINT:
            out.write(prefix + line)
            out.flush()


def _wait(server: _Process, silos: list[_Process]) -> int:
    try:
        code = server.popen.wait()
        deadline = time.monotonic() + CLIENT_GRACE
        for silo in silos:
            with suppress(subprocess.TimeoutExpired):
                silo.popen.wait(max(0.0, deadline - time.monotonic()))
        return code
    finally:
        for process in [server, *silos]:
            process.stop()
