from .conftest import run_python


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
        "common_args: {training_type: cross_silo}\ncomm_args: {backend: GRPC}\ndata_args: {download: false}\n"
    )
    out = run_python("-m", "fedml", "run", "--cf", str(path), f"run_dir={tmp_path}")
    assert out.returncode == 3
    assert "not available yet" in out.stderr


def test_env_and_unknown_command():
    env = run_python("-m", "fedml", "env")
    assert env.returncode == 0
    assert "torch " in env.stdout
    bad = run_python("-m", "fedml", "frobnicate")
    assert bad.returncode == 2
    assert "unknown command 'frobnicate'" in bad.stderr


def test_every_subcommand_has_help():
    for command in ("simulate", "run", "env"):
        out = run_python("-m", "fedml", command, "--help")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"usage: fedml {command}")


def test_simulate_refuses_a_contradicting_training_type(tmp_path):
    out = run_python("-m", "fedml", "simulate", "training_type=cross_silo", f"run_dir={tmp_path}")
    assert out.returncode == 2
    assert "training_type=cross_silo contradicts run_simulation (fedml simulate)" in out.stderr
    assert not any(tmp_path.iterdir())
