"""The MPI simulation over the TRPC transport under ``torchrun``, held to sp; and its launch errors."""

import re

import pytest
import torch

import fedml
from fedml.errors import ConfigError

from ..conftest import ROOT
from .launchers import (
    BIN,
    SETTINGS,
    final_model_and_accuracy,
    free_port,
    launch,
    launcher,
    max_abs_diff,
    run_dir_of,
)
from .test_mpi import sp_reference  # noqa: F401  (the shared fixture)

TRPC_EXAMPLE = str(ROOT / "examples" / "simulation_trpc_fedavg_mnist_lr.py")
TRPC_CONFIG = str(ROOT / "configs" / "simulation_trpc_fedavg_mnist_lr.yaml")


def torchrun(nproc, script, tmp_path, *extra):
    command = [
        launcher("torchrun"),
        "--nproc-per-node",
        str(nproc),
        "--master-port",
        str(free_port()),
        script,
    ]
    config = ["--cf", TRPC_CONFIG, *SETTINGS, f"run_dir={tmp_path / 'runs'}", f"data_cache_dir={tmp_path}"]
    return launch([*command, *config, *extra], tmp_path)


def test_trpc_example_under_torchrun_with_three_ranks_matches_sp(tmp_path, sp_reference):  # noqa: F811
    done, _ = torchrun(3, TRPC_EXAMPLE, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, sp_reference.model_state) < 1e-5
    assert accuracy == sp_reference.final_metrics["test_accuracy"]
    lines = done.stdout.splitlines()
    assert lines.count("[FedML-Server(0)]: Dataset: mnist, Clients: 10, Rounds: 5, Algorithm: FedAvg") == 1
    assert "[FedML-Server(0)]: 2 peers connected" in lines
    assert (
        sum(
            bool(re.fullmatch(r"\[FedML-Server\(0\)\]: Final Accuracy after Round 5: \d+\.\d%\.", x))
            for x in lines
        )
        == 1
    )
    assert any(x.startswith("[FedML-Client(1)]: Finished") for x in lines)
    assert any(x.startswith("[FedML-Client(2)]: Finished") for x in lines)
    assert "Not every rank" not in done.stdout + done.stderr


HANGING_SCRIPT = """
import os
import time

import fedml


class HangingTrainer(fedml.ClientTrainer):
    def train(self, train_data, device, args):
        if self.round_idx == 1 and os.environ["RANK"] == "2":
            time.sleep(300)
        return super().train(train_data, device, args)


args = fedml.init()
dataset, output_dim = fedml.data.load(args)
model = fedml.model.create(args, output_dim)
trainer = HangingTrainer(model, args)
fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model, client_trainer=trainer).run()
"""


def test_a_hung_worker_ends_the_torchrun_job_with_the_error_in_the_run_directory(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(HANGING_SCRIPT)
    done, seconds = torchrun(3, str(script), tmp_path, "timeout=3")
    assert done.returncode != 0
    assert seconds < 90
    assert "[FedML-Server(0)]: Ending rank 0 with exit status 1" in done.stdout.splitlines()
    error = (run_dir_of(tmp_path / "runs") / "error.txt").read_text()
    assert error == (
        "RoundIncompleteError: round 2: train: 4 of 7 clients replied, 7 needed; no CLIENT_UPDATE from "
        "peer(s) ['2'] within 3.0 s (comm_args.timeout); a peer process probably died or hangs\n"
    )


@pytest.fixture
def trpc_args(tmp_path):
    args = fedml.init(
        [*SETTINGS, f"run_dir={tmp_path / 'runs'}", f"data_cache_dir={tmp_path}"], config_file=TRPC_CONFIG
    )
    dataset, output_dim = fedml.data.load(args)
    return args, dataset, fedml.model.create(args, output_dim)


def run_trpc(trpc_args):
    args, dataset, model = trpc_args
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()


def test_a_run_not_launched_by_torchrun_names_the_missing_variables_and_the_command(trpc_args, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        ConfigError, match=r"RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set.*torchrun --nproc"
    ):
        run_trpc(trpc_args)


def test_one_process_is_a_clear_error(trpc_args, monkeypatch):
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=r"comm_args\.backend TRPC needs at least 2 processes.*torchrun"):
        run_trpc(trpc_args)


def test_a_remote_master_address_is_refused_before_anything_listens(trpc_args, monkeypatch):
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "3",
        "MASTER_ADDR": "192.0.2.7",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=re.escape("MASTER_ADDR 192.0.2.7 is not a loopback address")):
        run_trpc(trpc_args)


@pytest.mark.parametrize(
    ("topology", "extra"),
    [
        (
            "decentralized",
            [
                "graph=random_regular",
                "degree=3",
                "gossip_steps=2",
                "client_num_in_total=10",
                "client_num_per_round=10",
            ],
        ),
        ("hierarchical", ["group_num=2", "group_comm_round=2"]),
    ],
)
def test_the_topologies_run_over_trpc_unchanged_and_give_the_mpi_models(tmp_path, topology, extra):
    config = str(ROOT / "configs" / f"simulation_mpi_{topology}_mnist_lr.yaml")
    mpi_example = str(ROOT / "examples" / f"simulation_mpi_{topology}_mnist_lr.py")
    settings = ["--cf", config, *SETTINGS, "comm_round=3", *extra]
    runs = {}
    for backend in ("MPI", "TRPC"):
        where = tmp_path / backend
        where.mkdir()
        paths = [f"run_dir={where / 'runs'}", f"data_cache_dir={tmp_path}"]
        if backend == "MPI":
            command = [launcher("mpirun"), "-np", "3", str(BIN / "python"), mpi_example]
        else:
            command = [launcher("torchrun"), "--nproc-per-node", "3", "--master-port", str(free_port())]
            command.append(TRPC_EXAMPLE)
        done, _ = launch([*command, *settings, *paths], where)
        assert done.returncode == 0, done.stdout + done.stderr
        runs[backend] = final_model_and_accuracy(where / "runs")
    (mpi_state, mpi_accuracy), (trpc_state, trpc_accuracy) = runs["MPI"], runs["TRPC"]
    assert max_abs_diff(trpc_state, mpi_state) < 1e-5
    assert trpc_accuracy == mpi_accuracy
