"""What a network transport (gRPC, MQTT) needs to know, and the TLS rules it follows.

``NetworkSettings`` is read from ``comm_args`` once (``from_args``) and handed to a transport; the
transport never reads the configuration itself. ``resolve_tls`` applies one policy to both
transports, failing closed:

- TLS is the default. With no certificate files configured and a loopback address, the per-user
  development CA (``fedml.core.comm.certs.dev_certificates``) is used, so a run on one machine is
  encrypted with nothing configured; on any other address the files must be given.
- Plaintext needs ``comm_args.insecure: true``, and is refused on a non-loopback address unless
  ``comm_args.insecure_remote: true`` forces it too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

from fedml.core.comm.base import Transport, create_transport
from fedml.core.comm.chunks import CHUNK_BYTES
from fedml.core.comm.codec import DEFAULT_MAX_BYTES
from fedml.errors import ConfigError

DEFAULT_PORTS = {"GRPC": 8890, "MQTT": 8883, "MQTT-plain": 1883}
"""Ports used when ``comm_args.port`` is not set (MQTT: 8883 with TLS, 1883 in plaintext)."""


@dataclass(frozen=True)
class TLSFiles:
    """The PEM files one end of a TLS connection uses (any may be ``None``)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class NetworkSettings:
    """How a process reaches the others over a network transport.

    Attributes
    ----------
    host, port
        The server's address (gRPC) or the broker's (MQTT); a gRPC server listens on it.
    run_id
        Namespaces the run on a shared broker; every message's run must match.
    auth_token
        The secret every peer presents when it connects; ``None`` for none.
    timeout
        Default seconds ``receive`` waits.
    connect_timeout
        Seconds a client keeps trying to (re)connect before giving up.
    heartbeat
        Seconds between keepalive pings; a peer silent for about twice this is taken as gone.
    max_bytes
        Largest message accepted.
    chunk_bytes
        Payload bytes per chunk on the wire.
    tls
        Files for TLS; with ``insecure`` the connection is plaintext.
    client_auth
        The server requires client certificates signed by ``tls.ca`` (mutual TLS).
    insecure, insecure_remote
        Plaintext allowed (``insecure``), also to a non-loopback address (both).
    username, password
        Broker credentials (MQTT).

    """

    host: str = "127.0.0.1"
    port: int | None = None
    run_id: str = "0"
    auth_token: str | None = None
    timeout: float = 300.0
    connect_timeout: float = 60.0
    heartbeat: float = 10.0
    max_bytes: int = DEFAULT_MAX_BYTES
    chunk_bytes: int = CHUNK_BYTES
    tls: TLSFiles = field(default_factory=TLSFiles)
    client_auth: bool = False
    insecure: bool = False
    insecure_remote: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> NetworkSettings:
        """Read the settings from a run's ``comm_args`` (``auth_token_file`` read here).

        Raises
        ------
        ConfigError
            If ``comm_args.auth_token_file`` cannot be read or is empty.

        """
        token = args.auth_token
        if args.auth_token_file:
            path = Path(args.auth_token_file).expanduser()
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"comm_args.auth_token_file: cannot read {path} ({exc.strerror})") from exc
            if not token:
                raise ConfigError(f"comm_args.auth_token_file: {path} is empty")

        def optional(name: str) -> Path | None:
            value = getattr(args, name)
            return Path(value).expanduser() if value else None

        return cls(
            host=args.host,
            port=args.port,
            run_id=str(args.run_id),
            auth_token=token,
            timeout=args.timeout,
            connect_timeout=args.join_timeout,
            heartbeat=args.heartbeat,
            max_bytes=args.max_message_mb << 20,
            tls=TLSFiles(optional("tls_ca_file"), optional("tls_cert_file"), optional("tls_key_file")),
            client_auth=args.tls_client_auth,
            insecure=args.insecure,
            insecure_remote=args.insecure_remote,
            username=args.broker_username,
            password=args.broker_password,
        )


class NetworkTransport(Transport, Protocol):
    """A transport over the network: also says which port it uses (its own, or the broker's)."""

    port: int

    def __enter__(self) -> NetworkTransport: ...


def open_transport(args: Any, address: str, server: bool, log: Any = None) -> NetworkTransport:
    """Open the ``comm_args.backend`` transport of this process: the server end or a peer's.

    Raises
    ------
    ConfigError
        For settings that cannot be honoured (TLS, token file).
    TransportError
        If it cannot listen, or connect within ``comm_args.join_timeout``.

    """
    settings = NetworkSettings.from_args(args)
    if server:
        check_authentication(settings)
    transport = create_transport(args.backend, settings=settings, address=address, server=server, log=log)
    return cast(NetworkTransport, transport)


def check_authentication(settings: NetworkSettings) -> None:
    """Refuse a server that would admit any peer that can reach it.

    On a loopback address only this machine's processes can connect; on any other, the server needs
    ``comm_args.auth_token`` (or ``auth_token_file``) or mutual TLS (``tls_client_auth``).

    Raises
    ------
    ConfigError
        For a non-loopback server with neither.

    """
    if is_loopback(settings.host) or settings.auth_token or settings.client_auth:
        return
    raise ConfigError(
        f"comm_args: a server reachable at {settings.host} with no comm_args.auth_token (or auth_token_file) "
        "and no tls_client_auth would let anyone who reaches it join and send updates; set one of them"
    )


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine only (``localhost``, ``127.0.0.0/8``, ``::1``).

    Examples
    --------
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("10.0.0.5")
    (True, True, False)

    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_tls(settings: NetworkSettings, server: bool) -> TLSFiles | None:
    """Return the TLS files this end uses, or ``None`` for plaintext, by the module's policy.

    A server end needs a certificate and key (and a CA with ``client_auth``); a client end a CA (and a
    certificate and key to present under mutual TLS). Missing files on a loopback address come from
    the development CA.

    Raises
    ------
    ConfigError
        For plaintext on a non-loopback address without ``insecure_remote``, TLS files that are
        missing or unreadable, or certificates needed on a non-loopback address and not configured.

    """
    host = settings.host
    if settings.insecure:
        if settings.client_auth or settings.tls.cert:
            raise ConfigError(
                "comm_args.insecure: true turns TLS off, but TLS files or tls_client_auth are set; "
                "remove one or the other"
            )
        if not is_loopback(host) and not settings.insecure_remote:
            raise ConfigError(
                f"comm_args.insecure: plaintext to {host}, which is not a loopback address, would send "
                "models and tokens unencrypted across the network; configure TLS (fedml certs makes "
                "test certificates) or also set comm_args.insecure_remote: true to force it"
            )
        return None
    files = settings.tls
    # Checked before the development certificate fills a gap: it must never pair with the user's key.
    if (files.cert is None) != (files.key is None):
        raise ConfigError("comm_args.tls_cert_file and comm_args.tls_key_file must be given together")
    needed = files.cert is None if server else files.ca is None
    if needed or (server and settings.client_auth and files.ca is None):
        if not is_loopback(host):
            missing = "tls_cert_file and tls_key_file" if needed and server else "tls_ca_file"
            raise ConfigError(
                f"comm_args: TLS to {host} needs comm_args.{missing} (fedml certs makes a CA and "
                "certificates for a test deployment), or comm_args.insecure: true for plaintext"
            )
        from fedml.core.comm.certs import dev_certificates

        dev = dev_certificates()
        files = TLSFiles(
            files.ca or dev.ca,
            files.cert or (dev.server.cert if server else None),
            files.key or (dev.server.key if server else None),
        )
    if server and files.cert is None:
        raise ConfigError("comm_args: a TLS server needs tls_cert_file and tls_key_file")
    if not server and settings.client_auth and files.cert is None:
        raise ConfigError(
            "comm_args.tls_client_auth: true: this client needs tls_cert_file and tls_key_file to present"
        )
    for name, path in (("tls_ca_file", files.ca), ("tls_cert_file", files.cert), ("tls_key_file", files.key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"comm_args.{name}: {path} does not exist or is not a file")
    return files
