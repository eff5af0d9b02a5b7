import json

import pytest
import torch

import fedml
from fedml.core.checkpoint import CHECKPOINT_FILE, Checkpoint, load_checkpoint, save_checkpoint
from fedml.errors import ConfigError


def run(make_args, **overrides):
    args = make_args(**{"client_num_per_round": 4, "engine": "sequential", **overrides})
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()


@pytest.mark.parametrize(
    "algorithm",
    [
        {"federated_optimizer": "FedAvg"},
        {
            "federated_optimizer": "FedOpt",
            "server_optimizer": "adam",
            "server_lr": 0.01,
            "server_momentum": 0.9,
        },
        {"federated_optimizer": "SCAFFOLD"},
        {"federated_optimizer": "FedDyn"},
    ],
)
def test_a_resumed_run_reproduces_the_uninterrupted_one(make_args, algorithm):
    whole = run(make_args, comm_round=4, **algorithm)
    first_half = run(make_args, comm_round=2, **algorithm)
    resumed = run(make_args, comm_round=4, resume_from=str(first_half.run_dir / CHECKPOINT_FILE), **algorithm)
    assert all(torch.equal(whole.model_state[k], resumed.model_state[k]) for k in whole.model_state)
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4]
    assert [r["test_accuracy"] for r in resumed.history] == [r["test_accuracy"] for r in whole.history]
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]


def test_rounds_evaluated_after_the_last_checkpoint_are_not_repeated_in_the_resumed_metrics(make_args):
    first = run(make_args, comm_round=3, checkpoint_frequency=2, save_model=False)
    assert [r["round"] for r in first.history] == [1, 2, 3]
    resumed = run(make_args, comm_round=4, resume_from=str(first.run_dir / CHECKPOINT_FILE))
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3, 4]


def test_checkpoint_frequency_writes_intermediate_checkpoints(make_args):
    result = run(make_args, comm_round=3, checkpoint_frequency=2, save_model=False)
    assert load_checkpoint(result.run_dir / CHECKPOINT_FILE).rounds_done == 2


def test_the_final_checkpoint_holds_the_algorithm_state(make_args):
    result = run(make_args, comm_round=2, federated_optimizer="SCAFFOLD")
    checkpoint = load_checkpoint(result.run_dir / CHECKPOINT_FILE)
    assert checkpoint.rounds_done == 2
    assert set(checkpoint.algorithm_state) == {"server_control", "client_controls"}
    assert len(checkpoint.algorithm_state["client_controls"]) >= 4


def test_bad_checkpoints_name_the_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match=r"tracking_args\.resume_from: .*nope\.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not a fedml checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_save_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, Checkpoint(3, {"w": torch.ones(2)}, {"momentum": {"w": torch.zeros(2)}}))
    back = load_checkpoint(path)
    assert back.rounds_done == 3
    assert torch.equal(back.model_state["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]


def test_a_resume_under_other_settings_is_refused_naming_them_and_leaves_no_run_directory(make_args):
    first = run(make_args, comm_round=2)
    checkpoint = str(first.run_dir / CHECKPOINT_FILE)
    before = sorted(first.run_dir.parent.iterdir())
    with pytest.raises(
        ConfigError,
        match=r"a different run \(random_seed is 7 here, 0 in the checkpoint; model is 'mlp' here",
    ):
        run(make_args, comm_round=4, random_seed=7, model="mlp", resume_from=checkpoint)
    with pytest.raises(
        ConfigError, match=r"has 2 rounds done and train_args\.comm_round is 2, so nothing is left"
    ):
        run(make_args, comm_round=2, resume_from=checkpoint)
    assert sorted(first.run_dir.parent.iterdir()) == before
    assert run(make_args, comm_round=3, resume_from=checkpoint).history[-1]["round"] == 3


def test_a_model_state_that_does_not_fit_is_one_clear_line(make_args, tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    save_checkpoint(path, Checkpoint(1, {"linear.weight": torch.zeros(3, 3)}, {}))
    with pytest.raises(ConfigError, match=r"its model state does not fit model_args.model 'lr'"):
        run(make_args, comm_round=3, resume_from=str(path))
