"""Hierarchical FL (HierFAVG): equivalence with FedAvg, grouping, sp against MPI, robust rules, refusals."""

import itertools
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedml
from fedml.config import load_arguments
from fedml.core.algorithms import FedAvg
from fedml.core.round.hierarchical import group_clients
from fedml.core.steps import Steps
from fedml.errors import ConfigError, NotSupportedError, PrivacyError
from fedml.simulation.hierarchical import check_hierarchical

from ..conftest import ROOT
from .launchers import BIN, final_model_and_accuracy, launch, launcher, max_abs_diff

SP_CONFIG = ROOT / "configs" / "simulation_sp_hierarchical_mnist_lr.yaml"
MPI_CONFIG = ROOT / "configs" / "simulation_mpi_hierarchical_mnist_lr.yaml"
MPI_EXAMPLE = ROOT / "examples" / "simulation_mpi_hierarchical_mnist_lr.py"
FAST = {"comm_round": 2, "batch_size": 50, "learning_rate": 0.1, "quiet": True, "engine": "sequential"}
"""Two short rounds of 80 steps: enough to train well above chance (0.1) in a second."""


def simulate(args):
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``run(config, **overrides)``: the sp run of ``config`` with ``FAST`` and ``overrides``, made once."""
    done = {}

    def run_once(config=SP_CONFIG, **overrides):
        key = (str(config), tuple(sorted(overrides.items())))
        if key not in done:
            runs = tmp_path_factory.mktemp("runs")
            paths = {"download": False, "run_dir": str(runs), "data_cache_dir": str(runs / "cache")}
            done[key] = simulate(load_arguments(config, {**FAST, **paths, **overrides}))
        return done[key]

    return run_once


@pytest.mark.parametrize(
    ("engine", "per_round", "algorithm"),
    [
        ("sequential", 10, {}),
        ("vectorized", 7, {}),
        ("sequential", 7, {"federated_optimizer": "FedOpt", "server_optimizer": "adam", "server_lr": 0.01}),
    ],
    ids=["sequential", "vectorized-sampled", "fedopt-adam"],
)
def test_one_group_with_one_group_round_is_the_star_bit_for_bit(run, engine, per_round, algorithm):
    settings = {"engine": engine, "client_num_per_round": per_round, **algorithm}
    star = run(topology="star", **settings)
    hier = run(group_num=1, group_comm_round=1, **settings)
    # Bit-equal, not close: the one group trains the star's clients in the same order with the same
    # seeds, and the server's mean of one group model multiplies it by weight / total = 1.0 exactly.
    assert all(torch.equal(star.model_state[k], hier.model_state[k]) for k in star.model_state)
    assert hier.final_metrics["test_accuracy"] == star.final_metrics["test_accuracy"]


def test_two_groups_with_two_group_rounds_train_and_differ_from_fedavg(run):
    star = run(topology="star", engine="sequential", client_num_per_round=10)
    hier = run(group_num=2, group_comm_round=2)
    assert hier.final_metrics["test_accuracy"] > 0.5  # chance is 0.1
    assert max_abs_diff(hier.model_state, star.model_state) > 1e-3
    # The server aggregates one update per group.
    assert [r["clients"] for r in hier.history] == [2, 2]


def test_group_rounds_change_the_model(run):
    one, two = run(group_num=2, group_comm_round=1), run(group_num=2, group_comm_round=2)
    assert max_abs_diff(one.model_state, two.model_state) > 1e-3


def test_groups_by_label_train(run):
    result = run(group_num=2, group_comm_round=2, group_method="by_label")
    assert result.final_metrics["test_accuracy"] > 0.5
    assert max_abs_diff(result.model_state, run(group_num=2, group_comm_round=2).model_state) > 1e-4


@settings(max_examples=40, deadline=None)
@given(client_num=st.integers(1, 60), data=st.data(), seed=st.integers(0, 2**31))
def test_random_groups_partition_the_clients_evenly_and_follow_the_seed(client_num, data, seed):
    group_num = data.draw(st.integers(1, client_num))
    groups = group_clients(client_num, group_num, "random", seed)
    assert sorted(c for g in groups for c in g) == list(range(client_num))
    sizes = [len(g) for g in groups]
    assert len(groups) == group_num
    assert max(sizes) - min(sizes) <= 1
    assert all(g == sorted(g) for g in groups)
    assert group_clients(client_num, group_num, "random", seed) == groups


def test_random_groups_differ_between_seeds():
    assert group_clients(20, 4, "random", 0) != group_clients(20, 4, "random", 1)


@settings(max_examples=40, deadline=None)
@given(majority=st.lists(st.integers(0, 9), min_size=1, max_size=40), data=st.data())
def test_by_label_groups_keep_label_order_and_are_even(majority, data):
    client_num = len(majority)
    group_num = data.draw(st.integers(1, client_num))
    # Each client holds its majority label three times and one other label once.
    labels = [torch.tensor([y, y, y, (y + 1) % 10]) for y in majority]
    groups = group_clients(client_num, group_num, "by_label", labels=labels)
    assert sorted(c for g in groups for c in g) == list(range(client_num))
    sizes = [len(g) for g in groups]
    assert max(sizes) - min(sizes) <= 1
    # Consecutive blocks of the label order: a later group never holds a smaller label.
    for first, second in itertools.pairwise(groups):
        assert max(majority[c] for c in first) <= min(majority[c] for c in second)


def test_by_label_puts_clients_with_the_same_label_together():
    majority = [2, 0, 1, 0, 2, 1]
    labels = [torch.tensor([y, y, 9]) for y in majority]
    groups = group_clients(6, 3, "by_label", labels=labels)
    assert groups == [[1, 3], [2, 5], [0, 4]]


def test_too_many_groups_is_a_clear_error(run):
    with pytest.raises(ConfigError, match=r"topology_args.group_num is 11, but there are 10 clients"):
        run(group_num=11)


def test_a_robust_rule_runs_at_group_level(run):
    plain = run(group_num=2, group_comm_round=1)
    robust = run(group_num=2, enable_defense=True, defense_type="trimmed_mean", trim_param_b=0.2)
    assert robust.final_metrics["test_accuracy"] > 0.5
    assert max_abs_diff(plain.model_state, robust.model_state) > 1e-4


def test_a_robust_rule_in_one_group_is_the_star_s_robust_rule_bit_for_bit(run):
    defense = {"enable_defense": True, "defense_type": "median", "client_num_per_round": 10}
    star = run(topology="star", **defense)
    hier = run(group_num=1, group_comm_round=1, **defense)
    # The group aggregator takes the clients' median; the server's median of one group model is itself.
    assert all(torch.equal(star.model_state[k], hier.model_state[k]) for k in star.model_state)


@pytest.mark.parametrize(
    ("group_num", "where"),
    [(2, "the topology_args.group_num 2 group models at the server"), (5, "the 2 clients of the smallest")],
)
def test_a_robust_rule_that_cannot_aggregate_a_level_is_refused(run, group_num, where):
    with pytest.raises(ConfigError, match=rf"defense_args.defense_type krum aggregates {where}"):
        run(group_num=group_num, enable_defense=True, defense_type="krum", byzantine_client_num=1)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            {"federated_optimizer": "SCAFFOLD"},
            NotSupportedError,
            "train_args.federated_optimizer SCAFFOLD cannot use",
        ),
        (
            {"federated_optimizer": "FedNova"},
            NotSupportedError,
            "train_args.federated_optimizer FedNova cannot use",
        ),
        (
            {"enable_secure_aggregation": True},
            NotSupportedError,
            "the secure aggregation step does not run under common_args.topology hierarchical",
        ),
    ],
    ids=["scaffold", "fednova", "secagg"],
)
def test_what_hierarchical_training_cannot_honour_is_refused_at_start(run, overrides, error, message):
    with pytest.raises(error, match=message):
        run(**overrides)


def test_differential_privacy_is_refused_naming_dp_args(make_args):
    args = make_args(SP_CONFIG, enable_dp=True, dp_solution_type="ldp", noise_multiplier=0.1)
    # The check itself: a whole run would first load Opacus (seconds) to build the DP steps.
    simulator = SimpleNamespace(args=args, algorithm=FedAvg(args), steps=Steps())
    with pytest.raises(PrivacyError, match=r"dp_args.enable_dp: common_args.topology hierarchical sends"):
        check_hierarchical(simulator, [[0, 1], [2, 3]])


MPI_SETTINGS = {"client_num_per_round": 7, "group_comm_round": 2}


def test_mpi_with_a_rank_per_group_matches_sp(tmp_path, run):
    reference = run(MPI_CONFIG, backend="sp", **MPI_SETTINGS)
    settings = {**FAST, **MPI_SETTINGS, "run_dir": tmp_path / "runs", "data_cache_dir": tmp_path}
    overrides = [f"{k}={str(v).lower()}" for k, v in settings.items()]
    command = [launcher("mpirun"), "-np", "3", str(BIN / "python"), str(MPI_EXAMPLE), "--cf", str(MPI_CONFIG)]
    done, _ = launch([*command, "download=false", *overrides], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    state, accuracy = final_model_and_accuracy(tmp_path / "runs")
    assert max_abs_diff(state, reference.model_state) < 1e-5
    assert accuracy == reference.final_metrics["test_accuracy"]
    line = "[FedML-Server(0)]: Hierarchical: 2 groups of 5/5 clients, 2 group round(s) per round"
    assert line in done.stdout


class TwoProcesses:
    """Stands in for the transport of a job launched with two processes."""

    rank, world_size = 0, 2


def test_mpi_with_the_wrong_process_count_names_group_num(make_args, monkeypatch):
    from fedml.simulation.mpi import MPISimulator

    args = make_args(MPI_CONFIG, **FAST)
    dataset, output_dim = fedml.data.load(args)
    simulator = MPISimulator(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim))
    monkeypatch.setattr(simulator, "open_transport", TwoProcesses)
    with pytest.raises(
        ConfigError, match=r"topology_args.group_num 2 needs 3 processes .* but 2 were launched"
    ):
        simulator.run()
