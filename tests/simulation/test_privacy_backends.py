import json

import pytest
import torch

import fedml
from fedml.core.privacy.accountant import epsilon

from .launchers import BIN, SETTINGS, final_model_and_accuracy, launch, launcher, max_abs_diff, run_dir_of
from .test_mpi import MPI_CONFIG, MPI_EXAMPLE, mpirun
from .test_nccl import NCCL_EXAMPLE, config_args

LDP = ["enable_dp=true", "dp_solution_type=ldp", "noise_multiplier=0.05", "clipping_norm=0.5"]
CDP = [
    "enable_dp=true",
    "dp_solution_type=cdp",
    "noise_multiplier=0.3",
    "adaptive_clipping=true",
    "clipped_count_stddev=1.0",
]


def sp_run(tmp_path, extra):
    args = fedml.init([*SETTINGS, *extra, f"run_dir={tmp_path / 'sp'}"], config_file=MPI_CONFIG)
    args.backend = "sp"
    dataset, output_dim = fedml.data.load(args)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()


def last_epsilon(runs):
    records = (run_dir_of(runs) / "metrics.jsonl").read_text().splitlines()
    return json.loads(records[-1])["epsilon"]


DPSGD = ["enable_dp=true", "dp_solution_type=dpsgd", "noise_multiplier=1.0", "comm_round=2"]


@pytest.mark.parametrize("extra", [LDP, CDP, DPSGD], ids=["ldp", "cdp", "dpsgd"])
def test_dp_under_mpi_gives_the_sp_model_and_epsilon(tmp_path, extra):
    reference = sp_run(tmp_path, extra)
    done, _ = mpirun(3, MPI_EXAMPLE, tmp_path, *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, reference.model_state) < 1e-5
    assert accuracy == reference.final_metrics["test_accuracy"]
    assert last_epsilon(tmp_path / "runs") == pytest.approx(reference.final_metrics["epsilon"])


def test_local_dp_behind_the_all_reduce_gives_the_sp_model_and_a_bound_by_rounds(tmp_path):
    reference = sp_run(tmp_path, LDP)
    command = [launcher("mpirun"), "-np", "3", str(BIN / "python"), NCCL_EXAMPLE]
    done, _ = launch([*command, *config_args(tmp_path), *LDP], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    state, _ = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, reference.model_state) < 1e-5
    # The ranks' sum hides who trained, so every client is counted in every round.
    assert last_epsilon(tmp_path / "runs") == pytest.approx(epsilon([(0.025, 1.0, 5)], 1e-5))
    assert reference.final_metrics["epsilon"] <= last_epsilon(tmp_path / "runs")


def test_central_dp_behind_the_all_reduce_is_refused_at_start(tmp_path):
    command = [launcher("mpirun"), "-np", "2", str(BIN / "python"), NCCL_EXAMPLE]
    done, _ = launch([*command, *config_args(tmp_path), *CDP], tmp_path)
    assert done.returncode != 0
    assert "dp_solution_type cdp clips each client's delta on the server" in done.stderr + done.stdout
