"""FedOpt and FedNova against the cases where the answer is known."""

import torch

import fedml
import fedml.core.algorithms
import fedml.core.sampling


def run(make_args, **overrides):
    args = make_args(**{"comm_round": 3, "client_num_per_round": 5, "engine": "sequential", **overrides})
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_fedopt_sgd_with_unit_lr_and_no_momentum_is_fedavg(make_args):
    fedavg = run(make_args).model_state
    fedopt = run(make_args, federated_optimizer="FedOpt", server_optimizer="sgd", server_lr=1.0).model_state
    assert max_diff(fedavg, fedopt) <= 1e-6


def test_fedopt_momentum_and_adaptive_servers_change_the_trajectory(make_args):
    fedavg = run(make_args).model_state
    for optimizer, lr in (("sgd", 1.0), ("adam", 0.01), ("yogi", 0.01), ("adagrad", 0.1)):
        result = run(
            make_args,
            federated_optimizer="FedOpt",
            server_optimizer=optimizer,
            server_lr=lr,
            server_momentum=0.9,
        )
        assert max_diff(fedavg, result.model_state) > 1e-3, optimizer
        assert result.final_metrics["test_accuracy"] > 0.5, optimizer


def test_fedopt_state_round_trips(make_args):
    args = make_args(federated_optimizer="FedOpt", server_optimizer="adam")
    algorithm = fedml.core.algorithms.create_algorithm(args)
    algorithm.momentum = {"w": torch.ones(2)}
    algorithm.variance = {"w": torch.full((2,), 2.0)}
    restored = fedml.core.algorithms.create_algorithm(args)
    restored.load_state_dict(algorithm.state_dict())
    assert torch.equal(restored.variance["w"], algorithm.variance["w"])


def test_fednova_with_equal_local_steps_is_fedavg(make_args):
    # homo: 4,000 samples over 10 clients = 400 each, so every client runs 40 steps of batch 10.
    fedavg = run(make_args, partition_method="homo").model_state
    fednova = run(make_args, partition_method="homo", federated_optimizer="FedNova").model_state
    assert max_diff(fedavg, fednova) <= 1e-5


def test_fednova_reweights_unequal_clients(make_args):
    fedavg = run(make_args, partition_alpha=0.1).model_state
    fednova = run(make_args, partition_alpha=0.1, federated_optimizer="FedNova")
    assert max_diff(fedavg, fednova.model_state) > 1e-4
    assert fednova.final_metrics["test_accuracy"] > 0.3


def test_scaffold_first_round_is_fedavgs_first_round(make_args):
    fedavg = run(make_args, comm_round=1).model_state
    scaffold = run(make_args, comm_round=1, federated_optimizer="SCAFFOLD").model_state
    assert all(torch.equal(fedavg[k], scaffold[k]) for k in fedavg)


def test_scaffold_keeps_control_variates_only_for_participants(make_args):
    args = make_args(
        comm_round=3, client_num_per_round=3, federated_optimizer="SCAFFOLD", engine="sequential"
    )
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    runner = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model)
    result = runner.run()
    algorithm = runner.runner.algorithm
    participants = {c for r in range(3) for c in fedml.core.sampling.sample_clients(0, r, 10, 3)}
    assert set(algorithm.client_controls) == participants
    assert float(algorithm.server_control["linear.weight"].abs().sum()) > 0
    fedavg = run(make_args, comm_round=3, client_num_per_round=3).model_state
    assert max_diff(fedavg, result.model_state) > 1e-4
    assert result.final_metrics["test_accuracy"] > 0.5


def test_feddyn_trains_and_tracks_gradient_states(make_args):
    args = make_args(comm_round=3, client_num_per_round=5, federated_optimizer="FedDyn", feddyn_alpha=0.01)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    runner = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model)
    result = runner.run()
    algorithm = runner.runner.algorithm
    assert 0 < len(algorithm.client_states) <= 10
    assert result.final_metrics["test_accuracy"] > 0.5
    fedavg = run(make_args, comm_round=3, client_num_per_round=5).model_state
    assert max_diff(fedavg, result.model_state) > 1e-4


def test_stateful_algorithms_fall_back_to_sequential_training(make_args, caplog):
    caplog.set_level("INFO", logger="fedml")
    run(make_args, comm_round=1, federated_optimizer="SCAFFOLD", engine="vectorized")
    assert "sequential" in caplog.text
