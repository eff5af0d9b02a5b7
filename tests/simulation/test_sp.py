import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import fedml
from fedml.config import load_arguments
from fedml.errors import AggregationError
from fedml.simulation import run_fedavg


def simulate(args, **kwargs):
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model, **kwargs).run()


def test_default_run_reaches_85_percent_and_logs_every_round(default_run):
    assert default_run.final_metrics["round"] == 50
    assert default_run.final_metrics["test_accuracy"] >= 0.85
    assert [r["round"] for r in default_run.history] == list(range(1, 51))


def test_default_run_directory_holds_config_metrics_and_model(default_run):
    run_dir = default_run.run_dir
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["train_args"]["comm_round"] == 50
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records == default_run.history
    assert set(records[0]) == {"round", "test_accuracy", "test_loss", "train_loss", "seconds", "clients"}
    assert (run_dir / "summary.json").exists()
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(torch.equal(saved[k], default_run.model_state[k]) for k in saved)


def test_console_lines_have_the_documented_format(make_args, caplog):
    caplog.set_level("INFO", logger="fedml")
    simulate(make_args(comm_round=2))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[FedML-Server(0)]")]
    assert lines[0] == "[FedML-Server(0)]: Dataset: mnist, Clients: 10, Rounds: 2, Algorithm: FedAvg"
    assert re.fullmatch(
        r"\[FedML-Server\(0\)\]: Round 1: Training completed with accuracy \d+\.\d%\.", lines[1]
    )
    assert re.fullmatch(
        r"\[FedML-Server\(0\)\]: Round 2: Training completed with accuracy \d+\.\d%\.", lines[2]
    )
    assert re.fullmatch(r"\[FedML-Server\(0\)\]: Final Accuracy after Round 2: \d+\.\d%\.", lines[3])


def test_same_config_and_seed_give_bit_identical_models(make_args):
    first = simulate(make_args(comm_round=3, client_num_per_round=4)).model_state
    second = simulate(make_args(comm_round=3, client_num_per_round=4)).model_state
    other_seed = simulate(make_args(comm_round=3, client_num_per_round=4, random_seed=1)).model_state
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["linear.weight"], other_seed["linear.weight"])


def test_evaluation_follows_frequency_of_the_test_and_the_last_round(make_args):
    result = simulate(make_args(comm_round=7, frequency_of_the_test=3))
    assert [r["round"] for r in result.history] == [3, 6, 7]


class CountingTrainer(fedml.ClientTrainer):
    def __init__(self, model, args):
        super().__init__(model, args)
        self.calls = []

    def train(self, train_data, device, args):
        self.calls.append((self.round_idx, self.id, len(train_data)))
        return super().train(train_data, device, args)


class FirstClientAggregator(fedml.ServerAggregator):
    """Takes the first update instead of the mean, and records that its hooks ran."""

    def __init__(self, model, args):
        super().__init__(model, args)
        self.hooks = []

    def on_before_aggregation(self, raw_client_model_or_grad_list):
        self.hooks.append("before")
        return raw_client_model_or_grad_list

    def aggregate(self, raw_client_model_or_grad_list):
        self.hooks.append("aggregate")
        return dict(raw_client_model_or_grad_list[0][1])

    def on_after_aggregation(self, aggregated_model_or_grad):
        self.hooks.append("after")
        return aggregated_model_or_grad


def test_custom_trainer_and_aggregator_are_honoured(make_args):
    args = make_args(comm_round=3, client_num_per_round=4)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    trainer, aggregator = CountingTrainer(model, args), FirstClientAggregator(model, args)
    result = fedml.FedMLRunner(
        args, torch.device("cpu"), dataset, model, client_trainer=trainer, server_aggregator=aggregator
    ).run()
    assert len(trainer.calls) == 12
    assert {r for r, _, _ in trainer.calls} == {0, 1, 2}
    assert all(n == dataset.local_sample_num(c) for _, c, n in trainer.calls)
    assert aggregator.hooks == ["before", "aggregate", "after"] * 3
    default = simulate(make_args(comm_round=3, client_num_per_round=4)).model_state
    assert not torch.equal(result.model_state["linear.weight"], default["linear.weight"])


def test_only_sampled_clients_train(make_args):
    args = make_args(comm_round=4, client_num_per_round=2)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    trainer = CountingTrainer(model, args)
    fedml.FedMLRunner(args, torch.device("cpu"), dataset, model, client_trainer=trainer).run()
    per_round = [[c for r, c, _ in trainer.calls if r == round_idx] for round_idx in range(4)]
    assert all(len(set(clients)) == 2 for clients in per_round)
    assert len({tuple(c) for c in per_round}) > 1


class PoisonTrainer(fedml.ClientTrainer):
    def __init__(self, model, args, poisoned):
        super().__init__(model, args)
        self.poisoned = poisoned

    def get_model_params(self):
        state = super().get_model_params()
        if self.id in self.poisoned:
            state["linear.weight"][0, 0] = float("nan")
        return state


def test_a_nan_update_is_dropped_and_named(make_args, caplog):
    args = make_args(comm_round=2)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    result = fedml.FedMLRunner(
        args, torch.device("cpu"), dataset, model, client_trainer=PoisonTrainer(model, args, {3})
    ).run()
    assert torch.isfinite(result.model_state["linear.weight"]).all()
    assert "dropped the update of client 3" in caplog.text
    assert result.final_metrics["test_accuracy"] > 0.5


def test_all_updates_unusable_is_a_clear_error(make_args):
    args = make_args(comm_round=2)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    trainer = PoisonTrainer(model, args, set(range(10)))
    with pytest.raises(AggregationError, match="round 1: none of the 10 client updates is usable"):
        fedml.FedMLRunner(args, torch.device("cpu"), dataset, model, client_trainer=trainer).run()
    (run_dir,) = list(Path(args.run_dir).iterdir())
    assert (run_dir / "error.txt").read_text().startswith("AggregationError: round 1: none of the 10")


def test_run_fedavg_returns_a_run_result(tmp_path):
    result = run_fedavg(
        dataset="mnist", model="lr", num_clients=5, num_rounds=2, download=False, run_dir=str(tmp_path)
    )
    assert result.final_metrics["round"] == 2
    assert result.run_dir.parent == tmp_path
    args = load_arguments(result.run_dir / "config.yaml")
    assert (args.client_num_in_total, args.client_num_per_round) == (5, 5)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_other_models_train(make_args, name):
    result = simulate(make_args(model=name, comm_round=1, client_num_in_total=4, client_num_per_round=2))
    assert result.final_metrics["test_accuracy"] > 0.3


def test_a_custom_dataset_with_another_client_count_is_what_the_run_samples_and_records(make_args, caplog):
    caplog.set_level("INFO", logger="fedml")
    args = make_args(comm_round=2, client_num_per_round=5)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 1, 28, 28, generator=generator), torch.arange(200) % 10
    dataset = fedml.data.FederatedDataset.from_tensors(
        x, y, x[:50], y[:50], [list(range(i, 200, 20)) for i in range(20)]
    )
    model = fedml.model.create(args, 10)
    result = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()
    recorded = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert recorded["train_args"]["client_num_in_total"] == 20
    assert "Clients: 20," in caplog.text
    assert "The dataset has 20 clients, train_args.client_num_in_total said 10" in caplog.text
    too_few = fedml.data.FederatedDataset.from_tensors(
        x, y, x[:50], y[:50], [list(range(i, 200, 4)) for i in range(4)]
    )
    with pytest.raises(
        fedml.ConfigError, match=r"the dataset has 4 clients, fewer than train_args\.client_num_per_round 5"
    ):
        fedml.FedMLRunner(make_args(client_num_per_round=5), torch.device("cpu"), too_few, model)


def test_the_header_and_run_directory_name_what_ran_when_data_and_model_are_the_users(make_args, caplog):
    caplog.set_level("INFO", logger="fedml")

    class TinyNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    args = make_args(comm_round=1, client_num_in_total=4, client_num_per_round=4)
    x, y = torch.randn(80, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(80) % 10
    dataset = fedml.data.FederatedDataset.from_tensors(
        x, y, x[:20], y[:20], [list(range(i, 80, 4)) for i in range(4)], name="digits"
    )
    result = fedml.FedMLRunner(args, torch.device("cpu"), dataset, TinyNet()).run()
    assert result.run_dir.name.endswith("-digits-TinyNet-FedAvg")
    assert "Dataset: digits, Clients: 4, Rounds: 1, Algorithm: FedAvg" in caplog.text
    default = fedml.run_simulation(argv=[], comm_round=1, download=False, run_dir=args.run_dir)
    assert default.run_dir.name.endswith("-mnist-lr-FedAvg")


def test_the_result_says_which_engine_ran_and_times_every_round(make_args):
    result = fedml.run_simulation(
        argv=[],
        comm_round=3,
        frequency_of_the_test=2,
        engine="sequential",
        download=False,
        run_dir=make_args().run_dir,
    )
    assert [r["round"] for r in result.history] == [2, 3]
    assert result.engine == "sequential"
    assert len(result.round_seconds) == 3
    assert all(s > 0 for s in result.round_seconds)
    assert set(result.phases) == {"data", "setup", "rounds"}
    assert result.phases["data"] > 0
    assert result.phases["rounds"] == pytest.approx(sum(result.round_seconds), abs=1e-5)
    written = json.loads((result.run_dir / "timings.json").read_text())
    assert written == {"engine": "sequential", "round_seconds": result.round_seconds, "phases": result.phases}
