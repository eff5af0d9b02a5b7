import logging

import pytest
import torch
import yaml
from torch import nn

import fedml
from fedml.simulation import engine as engine_module
from fedml.simulation.engine import COST_BUDGET_S, StepCosts, choose_engine
from fedml.simulation.sp import SPSimulator


def run(args, **kwargs):
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model, **kwargs).run()


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


SMALL = {"client_num_in_total": 20, "client_num_per_round": 4, "comm_round": 3}


@pytest.mark.parametrize(
    "overrides",
    [
        {"model": "lr"},
        {"model": "mlp", "epochs": 2},
        {"model": "cnn", "client_num_per_round": 2, "batch_size": 16},
        {"model": "lr", "epochs": 2, "momentum": 0.5, "weight_decay": 0.001, "batch_size": 7},
        {"model": "mlp", "federated_optimizer": "FedProx", "fedprox_mu": 0.1},
        {"dataset": "synthetic", "model": "lr", "epochs": 2},
    ],
    ids=["lr", "mlp-epochs2", "cnn", "lr-momentum-wd", "mlp-fedprox", "synthetic"],
)
def test_vectorized_matches_sequential_after_three_rounds(make_args, overrides):
    settings = {**SMALL, **overrides}
    sequential = run(make_args(engine="sequential", **settings))
    vectorized = run(make_args(engine="vectorized", **settings))
    assert max_diff(sequential.model_state, vectorized.model_state) <= 1e-5
    assert vectorized.final_metrics["train_loss"] == pytest.approx(
        sequential.final_metrics["train_loss"], 1e-4
    )


def test_clients_of_unequal_sizes_are_masked(make_args):
    args = make_args(engine="vectorized", **SMALL)
    dataset, _ = fedml.data.load(args)
    sizes = {dataset.local_sample_num(c) for c in range(dataset.client_num)}
    assert len(sizes) > 5  # hetero partition: many different sizes and numbers of steps
    assert max_diff(run(make_args(engine="sequential", **SMALL)).model_state, run(args).model_state) <= 1e-5


def test_fedprox_with_mu_zero_is_fedavg_exactly(make_args):
    for engine in ("sequential", "vectorized"):
        fedavg = run(make_args(engine=engine, **SMALL)).model_state
        prox = run(
            make_args(engine=engine, federated_optimizer="FedProx", fedprox_mu=0.0, **SMALL)
        ).model_state
        assert all(torch.equal(fedavg[k], prox[k]) for k in fedavg)


def test_fedprox_pulls_towards_the_global_model(make_args):
    fedavg = run(make_args(engine="sequential", **SMALL)).model_state
    prox = run(make_args(engine="sequential", federated_optimizer="FedProx", fedprox_mu=1.0, **SMALL))
    assert max_diff(fedavg, prox.model_state) > 1e-4


class BatchNormModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(784)
        self.linear = nn.Linear(784, 10)

    def forward(self, x):
        return self.linear(self.norm(x.flatten(1)))


def sp(args, model=None, **kwargs):
    dataset, output_dim = fedml.data.load(args)
    model = model or fedml.model.create(args, output_dim)
    return SPSimulator(args, torch.device("cpu"), dataset, model, **kwargs)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("trainer", "a custom ClientTrainer is used"),
        ("adam", "client_optimizer 'adam'"),
        ("batchnorm", "buffers updated in place"),
        ("dropout", "draws random numbers"),
    ],
)
def test_unsupported_runs_fall_back_with_one_log_line(make_args, caplog, case, reason):
    caplog.set_level(logging.INFO, logger="fedml")
    args = make_args(engine="vectorized", client_optimizer="adam" if case == "adam" else "sgd")
    model = None
    if case == "batchnorm":
        model = BatchNormModel()
    elif case == "dropout":
        model = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(784, 10))
    kwargs = {}
    if case == "trainer":
        base = fedml.model.create(args, 10)
        model, kwargs = base, {"client_trainer": fedml.ClientTrainer(base, args)}
    simulator = sp(args, model, **kwargs)
    assert simulator.engine == "sequential"
    lines = [r for r in caplog.records if r.getMessage().startswith("engine:")]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert reason in lines[0].getMessage()


def test_an_algorithm_without_a_functional_rule_falls_back(make_args, caplog):
    class Opaque(fedml.core.algorithms.FedAvg):
        def local_objective(self):
            return None

    caplog.set_level(logging.INFO, logger="fedml")
    args = make_args(engine="vectorized")
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    engine, objective = choose_engine(
        args, torch.device("cpu"), model, Opaque(), dataset, custom_trainer=False
    )
    assert (engine, objective) == ("sequential", None)
    assert "no functional form" in caplog.text


def test_engine_is_read_from_yaml(make_args, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"train_args": {"engine": "sequential", "comm_round": 1}}))
    assert sp(make_args(config)).engine == "sequential"
    config.write_text(yaml.safe_dump({"train_args": {"engine": "vectorized", "comm_round": 1}}))
    assert sp(make_args(config)).engine == "vectorized"


def test_bad_engine_name_is_a_config_error(make_args):
    with pytest.raises(fedml.ConfigError, match=r"train_args\.engine"):
        make_args(engine="turbo")


def inject_costs(monkeypatch, batched, sequential):
    """Make ``auto``'s cost model report these seconds; return the list of the calls it got."""
    calls = []
    monkeypatch.setattr(engine_module, "MEASURED", {})

    def measure(model, objective, x, y, args):
        calls.append(len(y))
        return StepCosts(args.client_num_per_round, batched, sequential)

    monkeypatch.setattr(engine_module, "measure_step_costs", measure)
    return calls


@pytest.mark.parametrize(
    ("model", "batched", "sequential", "expected"),
    [
        ("lr", 0.001, 0.004, "vectorized"),
        ("lr", 0.004, 0.001, "sequential"),
        ("cnn", 0.010, 0.030, "vectorized"),
        ("cnn", 0.031, 0.030, "sequential"),
    ],
)
def test_auto_picks_the_engine_the_measured_costs_favour(
    make_args, monkeypatch, caplog, model, batched, sequential, expected
):
    caplog.set_level(logging.INFO, logger="fedml")
    calls = inject_costs(monkeypatch, batched, sequential)
    simulator = sp(make_args(model=model, batch_size=10))
    assert simulator.engine == expected
    assert calls == [10]  # measured once, on a real batch of batch_size samples
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine:")]
    assert len(lines) == 1
    assert lines[0].startswith(f"engine: {expected} (auto: ")
    assert f"{1000 * batched:.1f} ms" in lines[0]
    assert f"{1000 * sequential:.1f} ms" in lines[0]


def test_a_process_measures_a_setting_once_so_its_runs_stay_bit_identical(make_args, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="fedml")
    calls = inject_costs(monkeypatch, batched=0.001, sequential=0.004)
    first = run(make_args(**SMALL))
    second = run(make_args(**SMALL))
    assert calls == [10]
    assert (first.engine, second.engine) == ("vectorized", "vectorized")
    assert all(torch.equal(first.model_state[k], second.model_state[k]) for k in first.model_state)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("engine:")]
    assert "measured earlier in this process" not in lines[0]
    assert "measured earlier in this process" in lines[1]
    run(make_args(**{**SMALL, "batch_size": 7}))  # another setting: measured afresh
    assert calls == [10, 7]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"client_optimizer": "adam"}, "sequential"),  # the vectorized engine cannot run it
        ({"client_num_per_round": 1}, "sequential"),  # nothing to batch
        ({"engine": "vectorized"}, "vectorized"),  # explicit choices are not measured
        ({"engine": "sequential"}, "sequential"),
    ],
)
def test_auto_measures_only_when_there_is_a_choice(make_args, monkeypatch, overrides, expected):
    calls = inject_costs(monkeypatch, batched=0.004, sequential=0.001)
    assert sp(make_args(**overrides)).engine == expected
    assert calls == []


def test_the_cost_model_is_documented():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "performance.md").read_text()
    assert "## Convolutions in the vectorized engine" in text
    assert "measured cost model" in text
    assert f"{COST_BUDGET_S} s" in text


def test_a_huge_batch_size_is_capped_at_the_clients_data(make_args):
    from fedml.simulation.vectorized import _Layout

    args = make_args(client_num_in_total=20)
    dataset, _ = fedml.data.load(args)
    clients = [(c, dataset.local_train(c)) for c in range(4)]
    largest = max(len(data) for _, data in clients)
    layout = _Layout(clients, epochs=2, batch=10**9, seed=0, round_idx=0, device=torch.device("cpu"))
    assert layout.rows.shape == (2, 4, largest)
    assert layout.counts.sum().item() == 2 * sum(len(data) for _, data in clients)
    settings = {"client_num_in_total": 20, "client_num_per_round": 4, "comm_round": 2, "batch_size": 10**9}
    sequential = run(make_args(engine="sequential", **settings)).model_state
    assert max_diff(sequential, run(make_args(engine="vectorized", **settings)).model_state) <= 1e-5


def test_gathering_one_step_at_a_time_gives_the_same_model_bit_for_bit(make_args, monkeypatch):
    import fedml.simulation.vectorized as vectorized

    settings = {**SMALL, "epochs": 2, "momentum": 0.5, "weight_decay": 0.001, "batch_size": 7}
    chunked = run(make_args(engine="vectorized", **settings)).model_state
    again = run(make_args(engine="vectorized", **settings)).model_state
    monkeypatch.setattr(vectorized, "GATHER_BYTES", 1)
    one_step = run(make_args(engine="vectorized", **settings)).model_state
    assert all(torch.equal(chunked[k], again[k]) for k in chunked)
    assert all(torch.equal(chunked[k], one_step[k]) for k in chunked)
