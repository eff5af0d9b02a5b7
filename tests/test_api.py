import subprocess
import sys

import fedml

from .conftest import ROOT, run_python


def test_import_has_no_heavy_or_global_side_effects():
    code = (
        "import sys, logging, fedml; "
        "heavy = [m for m in ('mpi4py', 'grpc', 'paho', 'torchvision') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "assert not logging.getLogger('fedml').handlers; print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "clean", out.stderr


def test_init_reads_cf_and_overrides_from_argv(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train_args: {comm_round: 4}\n")
    args = fedml.init(["--cf", str(path), "epochs=2", "--rank", "1"])
    assert (args.comm_round, args.epochs, args.rank, args.config_file) == (4, 2, 1, str(path))


def test_five_step_script_runs_the_fedml_docs_config(tmp_path):
    out = run_python(
        "examples/main_fedml_simulation.py",
        "--cf",
        "configs/fedml_config.yaml",
        "comm_round=2",
        "download=false",
        f"run_dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr
    assert "[FedML-Server(0)]: Dataset: mnist, Clients: 10, Rounds: 2, Algorithm: FedAvg" in out.stdout
    assert "[FedML-Server(0)]: Final Accuracy after Round 2:" in out.stdout


def test_one_liner_reads_cf_from_the_command_line(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text(
        "train_args: {comm_round: 3}\ndata_args: {download: false}\n"
        f"tracking_args: {{run_dir: {tmp_path}}}\n"
    )
    out = run_python("-c", "import fedml; fedml.run_simulation()", "--cf", str(path))
    assert out.returncode == 0, out.stderr
    assert "Rounds: 3" in out.stdout
    assert "Round 3: Training completed with accuracy" in out.stdout
    assert "Final Accuracy after Round 3" in out.stdout
    assert "MNIST source: embedded subset" in out.stdout
