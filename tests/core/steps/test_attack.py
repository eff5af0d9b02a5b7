import pytest
import torch

import fedml
from fedml.core.steps import build_steps
from fedml.errors import ConfigError

BYZANTINE = {"enable_attack": True, "attack_type": "byzantine", "attack_mode": "flip"}


def run(args):
    dataset, output_dim = fedml.data.load(args)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()


def test_an_attack_configured_alone_has_its_attackers(tmp_path, make_args):
    config = tmp_path / "attack.yaml"
    config.write_text(
        "attack_args:\n  enable_attack: true\n  attack_type: byzantine\n  byzantine_client_num: 4\n"
    )
    args = make_args(config)
    assert (args.attack_args.byzantine_client_num, args.defense_args.byzantine_client_num) == (4, 0)
    (step,) = build_steps(args).client
    assert len(step.attackers) == 4
    assert step.describe().startswith("Simulated attack: byzantine (random) by clients [")


def test_a_flat_read_of_a_key_in_two_sections_is_an_error(make_args):
    args = make_args()
    with pytest.raises(
        ConfigError, match="byzantine_client_num is a setting of defense_args and of attack_args"
    ):
        _ = args.byzantine_client_num


def test_the_vectorized_engine_runs_the_attack_on_its_batched_results(make_args):
    settings = {**BYZANTINE, "byzantine_client_num": 3, "comm_round": 3, "client_num_per_round": 10}
    sequential = run(make_args(engine="sequential", **settings)).model_state
    vectorized = run(make_args(engine="vectorized", **settings)).model_state
    clean = run(make_args(engine="vectorized", **{**settings, "enable_attack": False})).model_state
    assert max(float((sequential[k] - vectorized[k]).abs().max()) for k in sequential) <= 1e-5
    assert max(float((clean[k] - vectorized[k]).abs().max()) for k in clean) > 1e-3


def test_label_flipping_poisons_the_attackers_data_before_training(make_args):
    args = make_args(
        enable_attack=True,
        attack_type="label_flipping",
        original_class_list=[0, 1],
        target_class_list=[1, 0],
        ratio_of_poisoned_client=0.2,
    )
    (step,) = build_steps(args).client
    dataset, _ = fedml.data.load(args)
    attacker = min(step.attackers)
    client = fedml.core.algorithms.Client(attacker, dataset.local_train(attacker))
    poisoned = step.prepare(client, None)
    _, before = client.train_data.tensors()
    _, after = poisoned.train_data.tensors()
    assert torch.equal(after[before == 0], torch.ones_like(after[before == 0]))
    assert torch.equal(after[before == 1], torch.zeros_like(after[before == 1]))
    honest = max(set(range(10)) - step.attackers)
    untouched = fedml.core.algorithms.Client(honest, dataset.local_train(honest))
    assert step.prepare(untouched, None) is untouched
