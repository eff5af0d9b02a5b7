from .conftest import ROOT, run_python


def test_simulate_runs_with_overrides(tmp_path):
    out = run_python("-m", "fedml", "simulate", "comm_round=1", "download=false", f"run_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "Final Accuracy after Round 1" in out.stdout
    assert len(list(tmp_path.iterdir())) == 1


def test_config_error_is_one_message_and_exit_code_2(tmp_path):
    out = run_python("-m", "fedml", "simulate", "--cf", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2
    assert out.stderr.startswith("fedml: error: ")
    assert "missing.yaml: cannot read config file" in out.stderr
    assert "Traceback" not in out.stderr


def test_unbuilt_training_type_exits_3(tmp_path):
    path = tmp_path / "silo.yaml"
    path.write_text(
        "common_args: {training_type: cross_device}\n"
        "comm_args: {backend: GRPC}\n"
        "data_args: {download: false}\n"
    )
    out = run_python("-m", "fedml", "run", "--cf", str(path), f"run_dir={tmp_path}")
    assert out.returncode == 3
    assert "not available yet" in out.stderr


def test_env_and_unknown_command():
    env = run_python("-m", "fedml", "env")
    assert env.returncode == 0
    assert "torch " in env.stdout
    for module in ("grpc", "paho.mqtt", "matplotlib", "tensorboard", "mlflow", "mosquitto"):
        assert f"\n{module}: " in env.stdout
    bad = run_python("-m", "fedml", "frobnicate")
    assert bad.returncode == 2
    assert "unknown command 'frobnicate'" in bad.stderr


def test_every_subcommand_has_help(capsys):
    # Each help from main() in this process (a process per subcommand took 37 s of the suite); the
    # tests above run the entry point as a process.
    from fedml.cli import main

    for command in (
        "simulate",
        "run",
        "server",
        "client",
        "launch",
        "certs",
        "env",
        "runs",
        "data",
        "jobs",
        "devices",
    ):
        try:
            code = main([command, "--help"])
        except SystemExit as exc:
            code = exc.code
        assert code == 0, command
        assert capsys.readouterr().out.startswith(f"usage: fedml {command}")


def test_simulate_refuses_a_contradicting_training_type(tmp_path):
    out = run_python("-m", "fedml", "simulate", "training_type=cross_silo", f"run_dir={tmp_path}")
    assert out.returncode == 2
    assert "training_type=cross_silo contradicts run_simulation (fedml simulate)" in out.stderr
    assert not any(tmp_path.iterdir())


def test_certs_writes_a_ca_and_certificates_it_signed(tmp_path):
    from cryptography import x509

    out = run_python(
        "-m", "fedml", "certs", "--out", str(tmp_path), "--host", "10.1.2.3", "--client", "silo-1"
    )
    assert out.returncode == 0, out.stderr
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    silo = x509.load_pem_x509_certificate((tmp_path / "silo-1.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    silo.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    usage = silo.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert (tmp_path / "silo-1.key").stat().st_mode & 0o077 == 0


def test_launch_refuses_a_simulation_and_too_few_clients(tmp_path):
    config = tmp_path / "sim.yaml"
    config.write_text("common_args: {training_type: simulation}\n")
    out = run_python("-m", "fedml", "launch", "--cf", str(config), "--clients", "2")
    assert out.returncode == 2
    assert "fedml launch starts networked jobs" in out.stderr
    silo = ROOT / "configs" / "cross_silo_fedavg_mnist_lr.yaml"
    out = run_python("-m", "fedml", "launch", "--cf", str(silo), "--clients", "1")
    assert out.returncode == 2
    assert "--clients 1: the job needs at least train_args.client_num_per_round 2" in out.stderr
    out = run_python("-m", "fedml", "client", "--cf", str(silo))
    assert out.returncode == 2
    assert "fedml client needs --rank N" in out.stderr
