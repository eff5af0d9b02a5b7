"""``MosquittoBroker``: a private Mosquitto broker that fedml starts for one job or test, and stops.

The broker runs from a temporary directory holding its configuration, password file, certificates
and log. Anonymous clients are refused; the username and password are given or generated. Run as
root, Mosquitto drops to the ``mosquitto`` user, so the directory and its files are handed to that
user (readable by it and root only).

Examples
--------
>>> with MosquittoBroker() as broker:  # doctest: +SKIP
...     settings = NetworkSettings(port=broker.port, username=broker.username,
...                                password=broker.password, insecure=True)

"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from fedml.errors import TransportError

INSTALL_HINT = (
    "install it with `apt-get install -y mosquitto` (or your system's package manager), "
    "or point comm_args.host/port at a running broker"
)
"""How to get a broker, said in every error about a missing ``mosquitto``."""

_SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/sbin")
"""Where Mosquitto installs its binaries, often missing from a non-root PATH."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free now (the OS picks it; another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class BrokerTLS:
    """The broker's TLS listener: its certificate and key, and the CA it trusts for client certificates.

    Attributes
    ----------
    cert, key
        The broker's certificate (valid for the host clients connect to) and private key, PEM.
    ca
        The CA certificate, PEM; it verifies client certificates under ``require_certificate``.
    require_certificate
        Mutual TLS: clients must present a certificate signed by ``ca``.

    """

    cert: Path
    key: Path
    ca: Path
    require_certificate: bool = False


class MosquittoBroker:
    """A Mosquitto broker on ``host``, with a password file, for the lifetime of a job or a test.

    Parameters
    ----------
    host
        The address the listeners bind.
    port
        The main listener's port (TLS when ``tls`` is given, else plaintext); ``None``: a free one.
    username, password
        The only credentials the broker accepts; generated with ``secrets`` when not given.
    tls
        Makes the main listener a TLS listener with these files.
    also_plaintext
        With ``tls``, also open a plaintext listener on another free port (``plain_port``).
    devices
        Device id -> password: each device logs in as its id, and the broker enforces ``fedml_acl``
        (``username`` is then the server's, with every fedml topic).
    binary, passwd_binary
        The ``mosquitto`` and ``mosquitto_passwd`` executables (names on ``PATH`` or paths).

    Attributes
    ----------
    host, port, username, password
        Where and how clients connect.
    plain_port
        The plaintext listener's port: ``port`` without TLS, a second port with ``also_plaintext``,
        else ``None``.
    directory
        The running broker's temporary directory (``None`` when stopped).

    ``start`` may be called again after ``stop``: the broker comes back on the same ports with the
    same credentials (and no state: persistence is off).

    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        tls: BrokerTLS | None = None,
        also_plaintext: bool = False,
        devices: Mapping[str, str] | None = None,
        binary: str = "mosquitto",
        passwd_binary: str = "mosquitto_passwd",
    ) -> None:
        self.devices = dict(devices or {})
        self.host = host
        self.port = port or free_port(self._probe_host(host))
        self.tls = tls
        self.plain_port: int | None = None
        if tls is None:
            self.plain_port = self.port
        elif also_plaintext:
            self.plain_port = free_port(self._probe_host(host))
        self.username = username or f"fedml-{secrets.token_hex(4)}"
        self.password = password or secrets.token_urlsafe(24)
        if ":" in self.username or "\n" in self.username + self.password:
            raise TransportError("a broker username may not contain ':' and neither may hold a newline")
        self.binary = binary
        self.passwd_binary = passwd_binary
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Write the configuration, start Mosquitto and wait until every listener accepts connections.

        Returns the broker itself; starting a running broker does nothing.

        Raises
        ------
        TransportError
            If Mosquitto is not installed, exits (the message holds its last log lines) or does not
            listen within ``timeout`` seconds.

        """
        if self.process is not None:
            return self
        binary, passwd_binary = _find(self.binary), _find(self.passwd_binary)
        directory = self.directory = Path(tempfile.mkdtemp(prefix="fedml-mosquitto-"))
        try:
            config = self._write_files(directory, passwd_binary)
            # The child keeps its own copy of the descriptor; ours closes at once.
            with open(directory / "stderr.log", "wb") as output:
                self.process = subprocess.Popen(
                    [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=output, stderr=output
                )
            self._wait_listening(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop Mosquitto (terminate, then kill after ``timeout`` seconds) and remove its directory."""
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def log_tail(self, lines: int = 10) -> str:
        """Return the last ``lines`` lines of the broker's log and error output (empty when stopped)."""
        if self.directory is None:
            return ""
        text = []
        for name in ("stderr.log", "mosquitto.log"):
            try:
                text += (self.directory / name).read_text(errors="replace").splitlines()
            except OSError:
                continue
        return "\n".join(text[-lines:])

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _write_files(self, directory: Path, passwd_binary: str) -> Path:
        passwords = directory / "passwd"
        _run_passwd(passwd_binary, passwords, {self.username: self.password, **self.devices})
        owner = _broker_user()
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {passwords}",
            "persistence false",
            f"log_dest file {directory / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # A large model travels as many QoS 1 chunks; the default of 1000 queued would drop some.
            "max_queued_messages 100000",
        ]
        if self.devices:
            acl = directory / "acl"
            acl.write_text(fedml_acl(self.username), encoding="utf-8")
            lines.append(f"acl_file {acl}")
        if owner is not None:
            lines.append(f"user {owner.pw_name}")
        if self.tls is not None:
            lines += [f"listener {self.port} {self.host}"]
            for option, source in (
                ("cafile", self.tls.ca),
                ("certfile", self.tls.cert),
                ("keyfile", self.tls.key),
            ):
                target = directory / f"{option}.pem"
                shutil.copyfile(source, target)
                lines.append(f"{option} {target}")
            lines.append(f"require_certificate {'true' if self.tls.require_certificate else 'false'}")
        if self.plain_port is not None:
            lines.append(f"listener {self.plain_port} {self.host}")
        config = directory / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        for path in directory.iterdir():
            path.chmod(0o600)
            if owner is not None:
                os.chown(path, owner.pw_uid, owner.pw_gid)
        directory.chmod(0o700)
        if owner is not None:
            os.chown(directory, owner.pw_uid, owner.pw_gid)
        return config

    def _wait_listening(self, timeout: float) -> None:
        # Mosquitto logs "... running" once every listener is open; a port that accepts before then
        # may belong to another program, so both must hold.
        deadline = time.monotonic() + timeout
        ports = [self.port] + ([self.plain_port] if self.plain_port not in (None, self.port) else [])
        probe = self._probe_host(self.host)
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise TransportError(
                    f"mosquitto exited with status {self.process.returncode} at start-up; its last "
                    f"lines:\n{self.log_tail()}"
                )
            if " running" in self.log_tail(50) and all(_accepts(probe, port) for port in ports):
                return
            if time.monotonic() > deadline:
                raise TransportError(
                    f"mosquitto did not listen on {self.host}:{', '.join(map(str, ports))} within "
                    f"{timeout} s; its last lines:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    @staticmethod
    def _probe_host(host: str) -> str:
        return "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def fedml_acl(server_user: str) -> str:
    """Return a Mosquitto ACL for fedml's topics, with each device logging in as its device id.

    The server's user reads and writes every fedml topic. A device reads only its own task topic and
    the server's announcements, and writes only its own update topic and last will, so it can neither
    read another device's task nor send an update in another device's name.

    Examples
    --------
    >>> print(fedml_acl("fedml-server").splitlines()[-1])
    pattern write fedml/+/will/%u

    """
    return (
        "\n".join(
            [
                "# fedml (fedml.core.comm.mqtt): a device's username is its device id.",
                f"user {server_user}",
                "topic readwrite fedml/#",
                "",
                "pattern read fedml/+/to/%u",
                "pattern read fedml/+/hello",
                "pattern write fedml/+/from/%u",
                "pattern write fedml/+/will/%u",
            ]
        )
        + "\n"
    )


def write_password_file(
    path: Path, users: Mapping[str, str], passwd_binary: str = "mosquitto_passwd"
) -> None:
    """Write a Mosquitto password file of ``users`` (username -> password) to ``path``, atomically.

    ``mosquitto_passwd`` hashes the passwords into a file next to ``path``, which then replaces it
    (owner-only, 0600).

    Raises
    ------
    TransportError
        If ``mosquitto_passwd`` is missing or fails, or a username holds ``:`` or a newline.

    """
    for user, password in users.items():
        if ":" in user or "\n" in user + password:
            raise TransportError(f"broker user {user!r:.40}: a username may not contain ':' nor a newline")
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        _run_passwd(_find(passwd_binary), scratch / "passwd", users)
        (scratch / "passwd").chmod(0o600)
        os.replace(scratch / "passwd", path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_passwd(passwd_binary: str, path: Path, users: Mapping[str, str]) -> None:
    try:
        for index, (user, password) in enumerate(users.items()):
            create = ["-c"] if index == 0 else []
            subprocess.run(
                [passwd_binary, "-b", *create, str(path), user, password],
                check=True,
                capture_output=True,
                timeout=30,
            )
    except subprocess.CalledProcessError as exc:
        raise TransportError(
            f"mosquitto_passwd failed: {exc.stderr.decode(errors='replace').strip()}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise TransportError("mosquitto_passwd did not finish within 30 s") from exc


def find_mosquitto(binary: str = "mosquitto") -> str | None:
    """Return the path of Mosquitto's ``binary`` (also looked for in the sbin folders), or ``None``."""
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SEARCH_PATH)
    return shutil.which(binary, path=path)


def _find(binary: str) -> str:
    found = find_mosquitto(binary)
    if found is None:
        raise TransportError(f"the MQTT broker program {binary!r} was not found; {INSTALL_HINT}")
    return found


def _broker_user() -> pwd.struct_passwd | None:
    """Return the user Mosquitto drops to when started as root (``mosquitto``, else ``nobody``)."""
    if os.geteuid() != 0:
        return None
    for name in ("mosquitto", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None
