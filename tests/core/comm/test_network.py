"""``resolve_tls`` fails closed: plaintext and missing certificates are refused off loopback."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from fedml.core.comm import certs as certs_module
from fedml.core.comm.certs import make_deployment
from fedml.core.comm.network import NetworkSettings, TLSFiles, check_authentication, is_loopback, resolve_tls
from fedml.errors import ConfigError


@pytest.fixture(autouse=True)
def dev_cert_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "dev-certs"
    monkeypatch.setattr(
        certs_module, "dev_certificates", functools.partial(certs_module.dev_certificates, directory=folder)
    )
    return folder


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.5", False),
        ("example.org", False),
        ("0.0.0.0", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_plaintext_off_loopback_is_refused_unless_forced() -> None:
    remote = NetworkSettings(host="10.0.0.5", insecure=True)

    with pytest.raises(ConfigError, match="insecure_remote"):
        resolve_tls(remote, server=False)
    assert (
        resolve_tls(NetworkSettings(host="10.0.0.5", insecure=True, insecure_remote=True), server=True)
        is None
    )
    assert resolve_tls(NetworkSettings(insecure=True), server=True) is None


def test_plaintext_with_tls_files_or_client_auth_is_a_contradiction(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="turns TLS off"):
        resolve_tls(NetworkSettings(insecure=True, client_auth=True), server=True)


@pytest.mark.parametrize(
    ("server", "missing"), [(True, "tls_cert_file and tls_key_file"), (False, "tls_ca_file")]
)
def test_tls_off_loopback_without_files_is_refused(server: bool, missing: str, dev_cert_dir: Path) -> None:
    with pytest.raises(ConfigError, match=f"TLS to 10.0.0.5 needs comm_args.{missing}"):
        resolve_tls(NetworkSettings(host="10.0.0.5"), server=server)
    assert not dev_cert_dir.exists()


def test_loopback_without_files_uses_the_development_ca(dev_cert_dir: Path) -> None:
    server = resolve_tls(NetworkSettings(), server=True)
    client = resolve_tls(NetworkSettings(), server=False)

    assert server == TLSFiles(
        dev_cert_dir / "ca.pem", dev_cert_dir / "server.pem", dev_cert_dir / "server.key"
    )
    assert client == TLSFiles(dev_cert_dir / "ca.pem", None, None)


def test_configured_files_are_used_and_must_exist(tmp_path: Path) -> None:
    files = make_deployment(tmp_path, server_hosts=["10.0.0.5"], clients=["silo"])
    tls = TLSFiles(files["ca"].cert, files["silo"].cert, files["silo"].key)

    assert resolve_tls(NetworkSettings(host="10.0.0.5", tls=tls, client_auth=True), server=False) == tls
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_tls(NetworkSettings(host="10.0.0.5", tls=TLSFiles(ca=tmp_path / "gone.pem")), server=False)
    with pytest.raises(ConfigError, match="needs tls_cert_file and tls_key_file to present"):
        resolve_tls(NetworkSettings(tls=TLSFiles(ca=files["ca"].cert), client_auth=True), server=False)


def test_a_key_without_its_certificate_is_refused_not_paired_with_the_development_one(tmp_path: Path) -> None:
    files = make_deployment(tmp_path, server_hosts=["127.0.0.1"])

    with pytest.raises(ConfigError, match="must be given together"):
        resolve_tls(NetworkSettings(tls=TLSFiles(key=files["server"].key)), server=True)


def test_a_server_off_loopback_needs_a_token_or_client_certificates():
    with pytest.raises(ConfigError, match=r"reachable at 0\.0\.0\.0 with no comm_args\.auth_token"):
        check_authentication(NetworkSettings(host="0.0.0.0"))
    check_authentication(NetworkSettings(host="0.0.0.0", auth_token="t"))
    check_authentication(NetworkSettings(host="0.0.0.0", client_auth=True))
    check_authentication(NetworkSettings(host="127.0.0.1"))


def test_the_token_file_is_read_and_an_empty_or_missing_one_is_refused(tmp_path: Path) -> None:
    from fedml.config import load_arguments

    token = tmp_path / "token"
    token.write_text("s3cret\n")
    settings = NetworkSettings.from_args(load_arguments(overrides={"auth_token_file": str(token)}))
    assert settings.auth_token == "s3cret"
    token.write_text("  \n")
    with pytest.raises(ConfigError, match=r"auth_token_file: .*token is empty"):
        NetworkSettings.from_args(load_arguments(overrides={"auth_token_file": str(token)}))
    with pytest.raises(ConfigError, match=r"auth_token_file: cannot read .*missing"):
        NetworkSettings.from_args(load_arguments(overrides={"auth_token_file": str(tmp_path / "missing")}))


def test_secrets_never_reach_the_run_directory(tmp_path: Path) -> None:
    import fedml

    result = fedml.run_simulation(
        argv=[],
        comm_round=1,
        download=False,
        run_dir=str(tmp_path),
        auth_token="s3cret",
        broker_password="hunter2",
    )
    written = (result.run_dir / "config.yaml").read_text()
    assert "s3cret" not in written
    assert "hunter2" not in written
    assert written.count("<redacted>") == 2
