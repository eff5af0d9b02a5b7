"""Certificates for TLS between fedml processes, made with the ``cryptography`` package.

``make_deployment`` writes a CA, a server certificate and client certificates for a test deployment
(``fedml certs``). ``dev_certificates`` keeps a per-user development CA and a loopback server
certificate, so a network run on one machine is encrypted with nothing configured. Keys are ECDSA
P-256; every file is written atomically, private keys readable by their owner only.

Examples
--------
>>> import tempfile
>>> from cryptography import x509
>>> folder = Path(tempfile.mkdtemp())
>>> files = make_deployment(folder, server_hosts=["127.0.0.1"], clients=["silo-1"])
>>> sorted(files)
['ca', 'server', 'silo-1']
>>> x509.load_pem_x509_certificate(files["server"].cert.read_bytes()).issuer.rfc4514_string()
'CN=fedml CA'

"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedml.core.comm.base import require
from fedml.core.files import atomic_write

require("cryptography", "grpc")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

DEV_CERT_DIR = Path("~/.cache/fedml/certs")
"""Where ``dev_certificates`` keeps the development CA and loopback certificate."""

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
"""The names a development server certificate is valid for."""


@dataclass(frozen=True)
class CertificateFiles:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevCertificates:
    """The development CA and the loopback server certificate it signed."""

    ca: Path
    server: CertificateFiles


def make_ca(directory: Path, name: str = "fedml CA", days: int = 365) -> CertificateFiles:
    """Write a self-signed CA certificate ``ca.pem`` and its key ``ca.key`` into ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(directory, "ca", cert, key)


def issue(
    directory: Path,
    ca: CertificateFiles,
    name: str,
    hosts: Sequence[str] = (),
    client: bool = False,
    days: int = 365,
) -> CertificateFiles:
    """Write ``name.pem`` and ``name.key``: a certificate for ``name`` signed by ``ca``.

    Parameters
    ----------
    directory
        Where the files go.
    ca
        The signing CA's files.
    name
        The certificate's common name (a silo's id for a client certificate).
    hosts
        DNS names and IP addresses a server certificate is valid for.
    client
        A client certificate (for mutual TLS) rather than a server certificate.
    days
        How long it is valid.

    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    names = [_general_name(host) for host in hosts]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca.key}: not an ECDSA CA key made by fedml")
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write(directory, name, cert, key)


def make_deployment(
    directory: Path, server_hosts: Sequence[str], clients: Sequence[str] = (), days: int = 365
) -> dict[str, CertificateFiles]:
    """Write a CA, a server certificate for ``server_hosts`` and a client certificate per name.

    Returns name -> files: ``"ca"``, ``"server"`` and one entry per client.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory, days=days)
    files = {"ca": ca, "server": issue(directory, ca, "server", server_hosts, days=days)}
    for name in clients:
        files[name] = issue(directory, ca, name, client=True, days=days)
    return files


def dev_certificates(directory: Path = DEV_CERT_DIR) -> DevCertificates:
    """Return the per-user development CA and loopback server certificate, making them on first use.

    Processes started together (a server and its silos) take a file lock, so they all use one CA.
    The certificate is valid for ``LOOPBACK_HOSTS`` only: it encrypts traffic on one machine; a
    deployment across hosts configures its own certificates.
    """
    folder = directory.expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca = CertificateFiles(folder / "ca.pem", folder / "ca.key")
        server = CertificateFiles(folder / "server.pem", folder / "server.key")
        if not all(path.exists() for path in (ca.cert, ca.key, server.cert, server.key)):
            ca = make_ca(folder, name="fedml development CA", days=3650)
            server = issue(folder, ca, "server", LOOPBACK_HOSTS, days=3650)
    return DevCertificates(ca.cert, server)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertificateFiles:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(key_path, lambda file: file.write(key_bytes))
    os.chmod(key_path, 0o600)
    cert_bytes = cert.public_bytes(serialization.Encoding.PEM)
    atomic_write(cert_path, lambda file: file.write(cert_bytes))
    os.chmod(cert_path, 0o644)
    return CertificateFiles(cert_path, key_path)
