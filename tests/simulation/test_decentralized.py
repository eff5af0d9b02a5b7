"""Decentralized training (D-PSGD): FedAvg on a complete graph, consensus against the gap, sp == MPI."""

import json

import numpy as np
import pytest
import torch

import fedml
from fedml.core.round.gossip import average, consensus_distance, mix, train_nodes
from fedml.core.topology import build_graph, mixing_matrix, spectral_gap
from fedml.errors import ConfigError
from fedml.simulation.decentralized import run_decentralized
from fedml.simulation.sp import SPSimulator

from ..conftest import ROOT
from .launchers import BIN, final_model_and_accuracy, launch, launcher, max_abs_diff, run_dir_of

SP_CONFIG = str(ROOT / "configs" / "simulation_sp_decentralized_mnist_lr.yaml")
MPI_EXAMPLE = str(ROOT / "examples" / "simulation_mpi_decentralized_mnist_lr.py")
MPI_CONFIG = str(ROOT / "configs" / "simulation_mpi_decentralized_mnist_lr.yaml")
SMALL = [
    "comm_round=2",
    "client_num_in_total=8",
    "client_num_per_round=8",
    "batch_size=50",
    "download=false",
    "engine=sequential",
    "quiet=true",
]
"""A few seconds per run: 8 nodes, 2 rounds of 10 steps each on the embedded MNIST subset."""


@pytest.fixture(autouse=True)
def one_thread():
    """Train on one thread, as the launched ranks do: on a loaded 2-core host, two threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def simulator(tmp_path, *overrides, config=SP_CONFIG):
    # No curves.png in process: drawing it costs more than these runs' training.
    settings = [*SMALL, "plots=false", *overrides, f"run_dir={tmp_path / 'runs'}"]
    args = fedml.init(settings, config_file=config)
    dataset, output_dim = fedml.data.load(args)
    return SPSimulator(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim))


def test_a_complete_graph_with_one_gossip_step_is_fedavg_over_all_clients_with_equal_weights(tmp_path):
    # homo splits the 4,000 training digits into 8 clients of 500: FedAvg's sample weights are equal.
    gossip = simulator(tmp_path / "gossip", "graph=full", "partition_method=homo")
    star = simulator(
        tmp_path / "star", "topology=star", "federated_optimizer=FedAvg", "partition_method=homo"
    )
    assert {gossip.dataset.local_sample_num(c) for c in range(8)} == {500}

    decentralized, fedavg = gossip.run(), star.run()

    assert max_abs_diff(decentralized.model_state, fedavg.model_state) < 1e-5
    assert [r["test_accuracy"] for r in decentralized.history] == [r["test_accuracy"] for r in fedavg.history]
    # After averaging with everyone every node holds the same model.
    assert all(r["consensus_distance"] < 1e-6 for r in decentralized.history)


def test_the_run_directory_records_the_consensus_distance_of_every_evaluated_round(tmp_path):
    result = simulator(tmp_path, "comm_round=3", "frequency_of_the_test=2").run()

    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [2, 3]
    assert all(x["consensus_distance"] > 0 and x["clients"] == 8 for x in lines)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["final_metrics"]["consensus_distance"] == lines[-1]["consensus_distance"]
    assert torch.load(result.run_dir / "model.pt", weights_only=True).keys() == result.model_state.keys()


def rerun(sim, start, **settings):
    """Run ``sim`` again from the model ``start`` with ``settings`` changed (saves loading the data)."""
    for key, value in settings.items():
        setattr(sim.args, key, value)
    sim.aggregator.set_model_params(start)
    return run_decentralized(sim)


def test_consensus_distance_shrinks_with_gossip_steps_as_the_spectral_gap_predicts(tmp_path):
    sim = simulator(tmp_path, "comm_round=1")
    start = sim.aggregator.get_model_params()
    trained = train_nodes(sim.local_backend(), 0, dict.fromkeys(range(8), start))
    weights = mixing_matrix(build_graph("ring", 8))
    gap = spectral_gap(weights)

    def spread(states):
        mean = average(states)
        flat = [torch.cat([s[k].flatten() - mean[k].flatten() for k in mean]) for s in states]
        return float(torch.stack(flat).double().norm())

    states = {i: trained[i].state for i in range(8)}
    before = spread(list(states.values()))
    distances = {}
    for steps in (1, 2, 4):
        distances[steps] = rerun(sim, start, gossip_steps=steps).history[-1]["consensus_distance"]
        mixed = states
        for _ in range(steps):
            mixed = mix(mixed, weights, range(8))
        nodes = [mixed[i] for i in range(8)]
        assert distances[steps] == pytest.approx(consensus_distance(nodes, average(nodes)), rel=1e-6)
        assert spread(nodes) <= (1 - gap) ** steps * before * (1 + 1e-6)

    assert distances[4] < distances[2] < distances[1]


def test_a_time_varying_graph_is_seeded(tmp_path):
    sim = simulator(tmp_path, "graph=random_regular", "degree=3", "time_varying=true")
    start = sim.aggregator.get_model_params()

    first, again = rerun(sim, start), rerun(sim, start)
    static = rerun(sim, start, time_varying=False)

    assert max_abs_diff(first.model_state, again.model_state) == 0
    assert [r["consensus_distance"] for r in first.history] == [
        r["consensus_distance"] for r in again.history
    ]
    assert max_abs_diff(first.model_state, static.model_state) > 1e-4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["topology=star"], "DPSGD .* needs common_args.topology decentralized, not star"),
        (["federated_optimizer=SCAFFOLD"], "federated_optimizer SCAFFOLD: decentralized training has no"),
        (["client_num_per_round=4"], "client_num_per_round 4: every node"),
        (["enable_defense=true", "defense_type=median"], "no server, so the server step"),
    ],
)
def test_what_needs_a_server_is_refused_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        run_decentralized(simulator(tmp_path, *overrides))


def test_an_adjacency_of_another_size_is_refused(tmp_path):
    ring = np.roll(np.eye(4, dtype=int), 1, axis=1)
    adjacency = (ring + ring.T).tolist()
    with pytest.raises(ConfigError, match=r"topology_args\.adjacency: a 4-node graph for 8 clients"):
        simulator(tmp_path, "graph=adjacency", f"adjacency={json.dumps(adjacency)}").run()


def test_mpi_with_three_ranks_gives_the_sp_models(tmp_path):
    # Time-varying random 3-regular graphs and two gossip steps: nodes exchange across both worker ranks.
    overrides = ["graph=random_regular", "degree=3", "time_varying=true", "gossip_steps=2", "comm_round=3"]
    reference = simulator(tmp_path / "sp", *overrides, config=MPI_CONFIG)
    reference.args.backend = "sp"
    expected = reference.run()
    command = [launcher("mpirun"), "-np", "3", str(BIN / "python"), MPI_EXAMPLE, "--cf", MPI_CONFIG]
    settings = [*SMALL, *overrides, f"run_dir={tmp_path / 'runs'}", f"data_cache_dir={tmp_path}"]

    done, _ = launch([*command, *settings], tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, expected.model_state) < 1e-5
    assert accuracy == expected.final_metrics["test_accuracy"]
    lines = (run_dir_of(tmp_path / "runs") / "metrics.jsonl").read_text().splitlines()
    distances = [json.loads(x)["consensus_distance"] for x in lines]
    assert distances == pytest.approx([r["consensus_distance"] for r in expected.history], rel=1e-5)


CRASHING_SCRIPT = """
import os

import fedml


class FailingTrainer(fedml.ClientTrainer):
    def train(self, train_data, device, args):
        if self.round_idx == 1 and int(os.environ["PMI_RANK"]) == 2:
            raise RuntimeError("lost its data")
        return super().train(train_data, device, args)


args = fedml.init()
dataset, output_dim = fedml.data.load(args)
model = fedml.model.create(args, output_dim)
trainer = FailingTrainer(model, args)
fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model, client_trainer=trainer).run()
"""


def test_a_failing_rank_ends_the_mpi_job_and_rank_0_records_why(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SCRIPT)
    # Without MPICH's cleanup on the first exit, rank 0 must end the others itself.
    command = [launcher("mpirun"), "-disable-auto-cleanup", "-np", "3", str(BIN / "python"), str(script)]
    settings = [*SMALL, "comm_round=3", "timeout=30", f"run_dir={tmp_path / 'runs'}"]

    done, seconds = launch([*command, "--cf", MPI_CONFIG, *settings], tmp_path)

    assert done.returncode != 0
    assert seconds < 60
    error = (run_dir_of(tmp_path / "runs") / "error.txt").read_text()
    assert error == "FedMLError: rank 2 failed: RuntimeError('lost its data')\n"


def test_nodes_with_equal_models_train_as_one_task_and_distinct_ones_apart(tmp_path):
    sim = simulator(tmp_path, "comm_round=1")
    backend = sim.local_backend()
    tasks = []
    train = backend.train
    backend.train = lambda task: tasks.append(list(task.clients)) or train(task)
    start = sim.aggregator.get_model_params()
    other = {k: v + 1 for k, v in start.items()}
    # Equal values in distinct objects group too; a state differing only past the first tensor does not.
    late = {k: (v + 1 if i == len(start) - 1 else v) for i, (k, v) in enumerate(start.items())}
    states = {0: start, 1: other, 2: {k: v.clone() for k, v in start.items()}, 3: late, 4: other}

    trained = train_nodes(backend, 0, states)

    assert sorted(tasks) == [[0, 2], [1, 4], [3]]
    assert sorted(trained) == [0, 1, 2, 3, 4]
