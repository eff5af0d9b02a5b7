"""Per-device broker credentials: generate them and write what a Mosquitto and each device need.

``write_credentials`` (``fedml devices credentials``) writes into one folder, every file owner-only
(0600) and written atomically:

- ``passwd``: the Mosquitto password file (``mosquitto_passwd`` hashes), the server's user and one
  user per device, named by its device id;
- ``acl``: ``fedml.core.comm.broker.fedml_acl``: each device reads only its own task topic and writes
  only its own update topic;
- ``mosquitto.conf``: a configuration snippet that uses both;
- ``server.yaml``: the server's ``comm_args`` (broker address, its username and password);
- ``devices/device-N.yaml`` and ``devices/device-N.password``: device ``N``'s edge configuration
  (device id, broker address, username) and its password, read through ``broker_password_file``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedml.core.comm.broker import fedml_acl, write_password_file
from fedml.core.files import atomic_write_text
from fedml.errors import ConfigError

SERVER_USER = "fedml-server"
"""The server's broker username unless told otherwise."""


@dataclass(frozen=True)
class Credentials:
    """The server's broker login and one password per device id (``"1"`` .. ``"N"``)."""

    server_user: str
    server_password: str
    devices: dict[str, str]


def generate_credentials(count: int, server_user: str = SERVER_USER) -> Credentials:
    """Return fresh random passwords (``secrets``) for the server and devices ``1 .. count``.

    Raises
    ------
    ConfigError
        For fewer than one device, or a server user that is a device id.

    Examples
    --------
    >>> sorted(generate_credentials(3).devices)
    ['1', '2', '3']

    """
    if count < 1:
        raise ConfigError(f"--count {count}: generate credentials for at least one device")
    if server_user.isdecimal():
        raise ConfigError(f"--server-user {server_user!r}: a number is a device's username; pick a name")
    devices = {str(n): secrets.token_urlsafe(18) for n in range(1, count + 1)}
    return Credentials(server_user, secrets.token_urlsafe(24), devices)


def _private(path: Path, text: str) -> Path:
    atomic_write_text(path, text)
    path.chmod(0o600)
    return path


def write_credentials(
    out: Path,
    credentials: Credentials,
    host: str = "127.0.0.1",
    port: int = 8883,
    tls: bool = True,
    job: Path | None = None,
) -> dict[str, Path]:
    """Write the password file, ACL, Mosquitto snippet, server and device configurations into ``out``.

    Returns the written files by name (``passwd``, ``acl``, ``mosquitto.conf``, ``server.yaml``,
    ``device-N.yaml``). ``tls`` says whether the devices connect with TLS (the snippet then expects
    ``cafile``/``certfile``/``keyfile`` lines of your own, e.g. from ``fedml certs``). A device's YAML
    is the ``job`` configuration (what the server runs) plus its ``comm_args``; without one, it says
    ``client_num_in_total`` is the device count (every process must agree on it).

    Raises
    ------
    TransportError
        If ``mosquitto_passwd`` is missing or fails.
    ConfigError
        If ``job`` cannot be read as a YAML mapping of sections.

    """
    base = _job_sections(job, len(credentials.devices))
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    (out / "devices").mkdir(exist_ok=True)
    (out / "devices").chmod(0o700)
    files: dict[str, Path] = {}
    users = {credentials.server_user: credentials.server_password, **credentials.devices}
    write_password_file(out / "passwd", users)
    files["passwd"] = out / "passwd"
    files["acl"] = _private(out / "acl", fedml_acl(credentials.server_user))
    snippet = [
        "# fedml cross-device: each device logs in as its device id (fedml devices credentials).",
        f"listener {port}",
        "allow_anonymous false",
        f"password_file {(out / 'passwd').resolve()}",
        f"acl_file {(out / 'acl').resolve()}",
        "max_queued_messages 100000",
    ]
    if tls:
        snippet += ["# TLS: add your broker's files (fedml certs --out DIR makes a test set)", "# cafile ..."]
        snippet += ["# certfile ...", "# keyfile ..."]
    files["mosquitto.conf"] = _private(out / "mosquitto.conf", "\n".join(snippet) + "\n")
    comm = {"host": host, "port": port, "insecure": not tls}
    server = {
        "comm_args": {
            **comm,
            "broker_username": credentials.server_user,
            "broker_password": credentials.server_password,
        }
    }
    files["server.yaml"] = _private(out / "server.yaml", yaml.safe_dump(server, sort_keys=False))
    for device, password in credentials.devices.items():
        secret = _private(out / "devices" / f"device-{device}.password", password + "\n")
        edge = {name: dict(section) for name, section in base.items()}
        edge.setdefault("common_args", {})["training_type"] = "cross_device"
        edge.setdefault("comm_args", {}).update(
            comm,
            device_id=int(device),
            broker_username=device,
            broker_password_file=str(secret.resolve()),
        )
        edge["comm_args"].pop("broker_password", None)
        files[f"device-{device}.yaml"] = _private(
            out / "devices" / f"device-{device}.yaml", yaml.safe_dump(edge, sort_keys=False)
        )
    return files


def _job_sections(job: Path | None, devices: int) -> dict[str, dict[str, object]]:
    if job is None:
        return {"train_args": {"client_num_in_total": devices, "client_num_per_round": devices}}
    try:
        data = yaml.safe_load(job.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"--cf {job}: cannot read it as YAML ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict | None) for v in data.values()):
        raise ConfigError(f"--cf {job}: expected a mapping of sections (common_args, train_args, ...)")
    return {name: dict(section or {}) for name, section in data.items()}
