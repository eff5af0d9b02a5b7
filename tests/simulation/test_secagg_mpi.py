"""Secure aggregation under ``mpirun``: the workers mask, rank 0 unmasks only the sum, as sp does."""

from __future__ import annotations

import pytest
import torch

import fedml
from fedml.core.privacy.secagg import sum_bound

from ..conftest import ROOT
from .launchers import BIN, SETTINGS, final_model_and_accuracy, launch, launcher, max_abs_diff

MPI_EXAMPLE = str(ROOT / "examples" / "simulation_mpi_fedavg_mnist_lr.py")
MPI_CONFIG = str(ROOT / "configs" / "simulation_mpi_fedavg_mnist_lr.yaml")
PLUS = ["enable_secure_aggregation=true", "sa_method=secagg_plus", "sa_neighbours=4"]
"""SecAgg+ on a 4-regular graph of the round's 7 clients (threshold 3 of each client's 5 holders)."""
PLAIN = ["enable_secure_aggregation=true", "sa_method=secagg"]
"""SecAgg: every client shares with the other 6 (threshold 4)."""


@pytest.mark.parametrize("secure", [PLUS, PLAIN], ids=["secagg_plus", "secagg"])
def test_secure_aggregation_under_mpi_gives_the_sp_secure_model(tmp_path, secure):
    method = secure[1].split("=")[1]
    args = fedml.init([*SETTINGS, *secure, f"run_dir={tmp_path / 'sp'}"], config_file=MPI_CONFIG)
    args.backend = "sp"
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    reference = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()
    command = [launcher("mpirun"), "-np", "3", str(BIN / "python"), MPI_EXAMPLE, "--cf", MPI_CONFIG]
    overrides = [*SETTINGS, *secure, f"run_dir={tmp_path / 'runs'}", f"data_cache_dir={tmp_path}"]
    done, _ = launch([*command, *overrides], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[FedML-Server(0)]: Secure aggregation ({method})" in done.stdout
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    # Both sum the same quantized inputs exactly in the ring; only the float training may differ.
    bound = args.comm_round * sum_bound(args.client_num_per_round, 16.0, 24)
    assert max_abs_diff(state, reference.model_state) <= bound
    assert accuracy == reference.final_metrics["test_accuracy"]
