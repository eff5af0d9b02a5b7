import json
import re

import pytest
import torch

import fedml

from ..conftest import ROOT
from .launchers import BIN, SETTINGS, final_model_and_accuracy, launch, launcher, max_abs_diff, run_dir_of

MPI_EXAMPLE = str(ROOT / "examples" / "simulation_mpi_fedavg_mnist_lr.py")
MPI_CONFIG = str(ROOT / "configs" / "simulation_mpi_fedavg_mnist_lr.yaml")


@pytest.fixture(scope="package")
def sp_reference(tmp_path_factory):
    """The in-process sp run that every launched backend must reproduce."""
    runs = tmp_path_factory.mktemp("sp-reference")
    overrides = dict(item.split("=") for item in SETTINGS)
    args = fedml.init([*(f"{k}={v}" for k, v in overrides.items())], config_file=MPI_CONFIG)
    args.backend = "sp"
    args.run_dir = str(runs)
    args.data_cache_dir = str(runs / "cache")
    dataset, output_dim = fedml.data.load(args)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()


@pytest.fixture(scope="package")
def sp_vectorized(tmp_path_factory):
    """The in-process sp run with the vectorized engine, which every backend's workers must reproduce."""
    runs = tmp_path_factory.mktemp("sp-vectorized")
    args = fedml.init([*SETTINGS, "engine=vectorized", f"run_dir={runs}"], config_file=MPI_CONFIG)
    args.backend = "sp"
    args.data_cache_dir = str(runs / "cache")
    dataset, output_dim = fedml.data.load(args)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()


def mpirun(np, script, tmp_path, *extra, flags=()):
    command = [launcher("mpirun"), *flags, "-np", str(np), str(BIN / "python"), script]
    config = ["--cf", MPI_CONFIG, *SETTINGS, f"run_dir={tmp_path / 'runs'}", f"data_cache_dir={tmp_path}"]
    return launch([*command, *config, *extra], tmp_path)


def test_mpi_example_with_three_ranks_matches_sp(tmp_path, sp_reference):
    done, _ = mpirun(3, MPI_EXAMPLE, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, sp_reference.model_state) < 1e-5
    assert accuracy == sp_reference.final_metrics["test_accuracy"]
    lines = done.stdout.splitlines()
    assert lines.count("[FedML-Server(0)]: Dataset: mnist, Clients: 10, Rounds: 5, Algorithm: FedAvg") == 1
    assert (
        sum(
            bool(re.fullmatch(r"\[FedML-Server\(0\)\]: Final Accuracy after Round 5: \d+\.\d%\.", x))
            for x in lines
        )
        == 1
    )
    assert any(x.startswith("[FedML-Client(1)]: ") for x in lines)
    assert any(x.startswith("[FedML-Client(2)]: ") for x in lines)
    assert sum(x.startswith("dataset mnist from") for x in lines) == 1


def test_mpi_workers_train_their_share_with_the_vectorized_engine_and_match_sp(tmp_path, sp_vectorized):
    done, _ = mpirun(3, MPI_EXAMPLE, tmp_path, "engine=vectorized")
    assert done.returncode == 0, done.stdout + done.stderr
    # Every rank builds its engine (the server's is unused); both workers must have chosen vectorized.
    assert (done.stdout + done.stderr).count("engine: vectorized (train_args.engine)") == 3
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, sp_vectorized.model_state) < 1e-5
    assert accuracy == sp_vectorized.final_metrics["test_accuracy"]


def test_mpi_with_one_rank_is_a_clear_error(tmp_path):
    done, _ = mpirun(1, MPI_EXAMPLE, tmp_path)
    assert done.returncode != 0
    assert "comm_args.backend MPI needs at least 2 processes" in done.stderr


CRASHING_SCRIPT = """
import os

import fedml


class DyingTrainer(fedml.ClientTrainer):
    def train(self, train_data, device, args):
        if self.round_idx == 1 and int(os.environ["PMI_RANK"]) == 2:
            os._exit(3)
        return super().train(train_data, device, args)


args = fedml.init()
dataset, output_dim = fedml.data.load(args)
model = fedml.model.create(args, output_dim)
trainer = DyingTrainer(model, args)
fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model, client_trainer=trainer).run()
"""


def test_a_dead_worker_ends_the_job_with_a_clear_error_on_rank_0(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SCRIPT)
    # MPICH's default would kill every rank as soon as one dies; without that, rank 0 must notice itself.
    done, seconds = mpirun(3, str(script), tmp_path, "timeout=3", flags=["-disable-auto-cleanup"])
    assert done.returncode != 0
    assert seconds < 60
    # The console line races MPI_Abort through mpirun's output forwarding; the run directory does not.
    error = (run_dir_of(tmp_path / "runs") / "error.txt").read_text()
    assert error == (
        "RoundIncompleteError: round 2: train: 4 of 7 clients replied, 7 needed; no CLIENT_UPDATE from "
        "peer(s) ['2'] within 3.0 s (comm_args.timeout); a peer process probably died or hangs\n"
    )


SLOW_SERVER_SCRIPT = """
import time

import fedml


class SlowEvaluation(fedml.ServerAggregator):
    def test(self, test_data, device, args):
        time.sleep(1.2 * args.timeout)  # longer than a worker's update may take, shorter than its wait
        return super().test(test_data, device, args)


args = fedml.init()
dataset, output_dim = fedml.data.load(args)
model = fedml.model.create(args, output_dim)
aggregator = SlowEvaluation(model, args)
fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model, server_aggregator=aggregator).run()
"""


def test_workers_wait_out_a_server_whose_evaluation_outlasts_the_timeout(tmp_path):
    # Between two rounds a worker waits for the server's slowest peer and then for the server's own
    # work; waiting only comm_args.timeout, the workers aborted this healthy job (and, racing a dead
    # peer's report, killed rank 0 while it wrote error.txt).
    script = tmp_path / "slow.py"
    script.write_text(SLOW_SERVER_SCRIPT)
    # The workers wait 2 * timeout: 0.8 * timeout (2.4 s) is left for the rest of the server's work
    # between rounds and at the end (plots off: drawing them took a slow machine most of a second).
    done, _ = mpirun(3, str(script), tmp_path, "timeout=3", "comm_round=2", "plots=false")
    assert done.returncode == 0, done.stdout + done.stderr
    records = (run_dir_of(tmp_path / "runs") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in records] == [1, 2]


def test_seed_mpi_backend_snippet_prints_its_line_on_every_rank(tmp_path):
    snippet = (
        "from fedml.core import mpi_backend\n"
        "backend = mpi_backend.MPIBackend()\n"
        "backend.initialize()\n"
        'print("MPI Backend Initialized Successfully!")\n'
        "print(f'rank {backend.rank} of {backend.size}')\n"
    )
    done, _ = launch([launcher("mpirun"), "-np", "2", str(BIN / "python"), "-c", snippet], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("MPI Backend Initialized Successfully!") == 2
    assert {"rank 0 of 2", "rank 1 of 2"} <= set(done.stdout.splitlines())


def test_stateful_algorithm_with_a_defense_matches_sp_under_mpi(tmp_path):
    extra = ["federated_optimizer=SCAFFOLD", "enable_defense=true", "defense_type=median"]
    args = fedml.init([*SETTINGS, *extra, f"run_dir={tmp_path / 'sp'}"], config_file=MPI_CONFIG)
    args.backend = "sp"
    dataset, output_dim = fedml.data.load(args)
    reference = fedml.FedMLRunner(
        args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)
    ).run()
    done, _ = mpirun(3, MPI_EXAMPLE, tmp_path, *extra)
    assert done.returncode == 0, done.stdout + done.stderr
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, reference.model_state) < 1e-5
    assert accuracy == reference.final_metrics["test_accuracy"]


def test_a_run_resumed_under_mpi_matches_the_uninterrupted_sp_run(tmp_path):
    extra = ["federated_optimizer=SCAFFOLD"]
    args = fedml.init([*SETTINGS, *extra, f"run_dir={tmp_path / 'sp'}"], config_file=MPI_CONFIG)
    args.backend = "sp"
    dataset, output_dim = fedml.data.load(args)
    whole = fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()
    first = tmp_path / "first"
    first.mkdir()
    done, _ = mpirun(3, MPI_EXAMPLE, first, *extra, "comm_round=3")
    assert done.returncode == 0, done.stdout + done.stderr
    checkpoint = run_dir_of(first / "runs") / "checkpoint.pt"
    done, _ = mpirun(3, MPI_EXAMPLE, tmp_path, *extra, f"resume_from={checkpoint}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Resumed from" in done.stdout
    state, _ = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, whole.model_state) < 1e-5
