import re

import pytest
import torch

import fedml

from ..conftest import ROOT
from .launchers import BIN, SETTINGS, final_model_and_accuracy, free_port, launch, launcher, max_abs_diff
from .test_mpi import sp_reference, sp_vectorized  # noqa: F401  (the shared fixtures)

NCCL_EXAMPLE = str(ROOT / "examples" / "simulation_nccl_fedavg_mnist_lr.py")
NCCL_CONFIG = str(ROOT / "configs" / "simulation_nccl_fedavg_mnist_lr.yaml")


def config_args(tmp_path):
    return ["--cf", NCCL_CONFIG, *SETTINGS, f"run_dir={tmp_path / 'runs'}", f"data_cache_dir={tmp_path}"]


def check_matches_sp(done, tmp_path, reference):
    assert done.returncode == 0, done.stdout + done.stderr
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, reference.model_state) < 1e-5
    assert accuracy == reference.final_metrics["test_accuracy"]
    lines = done.stdout.splitlines()
    assert (
        "[FedML-Server(0)]: No CUDA device in use; torch.distributed runs on the CPU with the gloo backend"
        in lines
    )
    assert sum(x.startswith("dataset mnist from") for x in lines) == 1
    assert (
        sum(
            bool(re.fullmatch(r"\[FedML-Server\(0\)\]: Final Accuracy after Round 5: \d+\.\d%\.", x))
            for x in lines
        )
        == 1
    )


def test_nccl_example_under_mpirun_with_four_ranks_matches_sp(tmp_path, sp_reference):  # noqa: F811
    done, _ = launch(
        [launcher("mpirun"), "-np", "4", str(BIN / "python"), NCCL_EXAMPLE, *config_args(tmp_path)], tmp_path
    )
    check_matches_sp(done, tmp_path, sp_reference)


def test_nccl_example_under_torchrun_matches_sp(tmp_path, sp_reference):  # noqa: F811
    port = str(free_port())
    command = [launcher("torchrun"), "--nproc-per-node", "2", "--master-port", port, NCCL_EXAMPLE]
    done, _ = launch([*command, *config_args(tmp_path)], tmp_path)
    check_matches_sp(done, tmp_path, sp_reference)


def test_nccl_ranks_train_their_share_with_the_vectorized_engine_and_match_sp(tmp_path, sp_vectorized):  # noqa: F811
    port = str(free_port())
    command = [launcher("torchrun"), "--nproc-per-node", "2", "--master-port", port, NCCL_EXAMPLE]
    done, _ = launch([*command, *config_args(tmp_path), "engine=vectorized"], tmp_path)
    assert (done.stdout + done.stderr).count("engine: vectorized (train_args.engine)") == 2
    check_matches_sp(done, tmp_path, sp_vectorized)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_PORT": "1234"},
            ("torchrun", 1, 2, 1, 1234),
        ),
        ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"}, ("Open MPI", 3, 4, 3, 29500)),
        ({"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0"}, ("MPICH", 2, 3, 0, 29500)),
        ({}, ("none", 0, 1, 0, 29500)),
    ],
)
def test_launch_information_comes_from_the_launchers_environment(env, expected):
    from fedml.simulation.launch import detect_launch

    info = detect_launch(env)
    assert (info.launcher, info.rank, info.world_size, info.local_rank, info.master_port) == expected
    assert info.master_addr == "127.0.0.1"


@pytest.mark.parametrize(
    ("overrides", "culprit"),
    [
        ({"federated_optimizer": "SCAFFOLD"}, "SCAFFOLD"),
        ({"federated_optimizer": "FedNova"}, "FedNova"),
        ({"enable_defense": True, "defense_type": "median"}, "the defense step"),
    ],
)
def test_rules_that_need_every_client_update_are_refused(make_args, overrides, culprit):
    with pytest.raises(
        fedml.ConfigError, match=f"sums client updates before the server sees them, which {culprit}"
    ):
        make_args(backend="NCCL", **overrides)
    args = make_args(**overrides)
    args.backend = "NCCL"  # set after loading, as code may: the runner still refuses it before any round
    dataset, output_dim = fedml.data.load(args)
    pattern = (
        f"comm_args.backend NCCL sums client updates .*, which {culprit} cannot use: it needs every client's"
    )
    with pytest.raises(fedml.NotSupportedError, match=pattern):
        fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim))
