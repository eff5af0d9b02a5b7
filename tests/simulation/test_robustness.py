"""Attacks and defenses end to end: FedAvg collapses under Byzantine clients, robust rules hold."""

import pytest
import torch

import fedml
from fedml.core.robust import aggregation_rule_names, create_aggregation_rule
from fedml.core.steps import build_steps
from fedml.core.steps.attack import AttackStep
from fedml.errors import ConfigError

ATTACK = {
    "client_num_in_total": 20,
    "client_num_per_round": 20,
    "comm_round": 5,
    "partition_method": "homo",
    "enable_attack": True,
    "attack_type": "byzantine",
    "attack_mode": "scaled",
    "scale_factor": 100.0,
    "byzantine_client_num": 4,
}


def run(make_args, **overrides):
    args = make_args(**overrides)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()


def test_scaled_byzantine_clients_break_fedavg(make_args, caplog):
    caplog.set_level("INFO", logger="fedml")
    attacked = run(make_args, **ATTACK).final_metrics["test_accuracy"]
    clean = run(make_args, **{**ATTACK, "enable_attack": False}).final_metrics["test_accuracy"]
    assert clean > 0.8
    assert attacked < clean - 0.2
    assert "Simulated attack: byzantine (scaled) by clients" in caplog.text


@pytest.mark.parametrize(
    "defense",
    ["median", "trimmed_mean", "krum", "multikrum", "bulyan", "norm_diff_clipping", "geometric_median"],
)
def test_every_defense_holds_against_scaled_byzantine_clients(make_args, defense):
    result = run(
        make_args,
        **ATTACK,
        enable_defense=True,
        defense_type=defense,
        trim_param_b=0.2,
        krum_param_m=10,
        norm_bound=1.0,
    )
    assert result.final_metrics["test_accuracy"] > 0.75


def test_defense_combines_with_another_optimizer(make_args):
    result = run(
        make_args, **ATTACK, federated_optimizer="FedProx", enable_defense=True, defense_type="median"
    )
    assert result.final_metrics["test_accuracy"] > 0.75


def test_label_flipping_attackers_train_on_flipped_labels(make_args):
    args = make_args(
        enable_attack=True,
        attack_type="label_flipping",
        original_class_list=[0, 1],
        target_class_list=[1, 0],
        ratio_of_poisoned_client=0.3,
    )
    (step,) = build_steps(args).client
    assert isinstance(step, AttackStep)
    assert len(step.attackers) == 3


def test_model_replacement_makes_the_attacker_dominate(make_args):
    honest = run(make_args, comm_round=2).model_state
    replaced = run(
        make_args, comm_round=2, enable_attack=True, attack_type="model_replacement", byzantine_client_num=1
    ).model_state
    assert max(float((honest[k] - replaced[k]).abs().max()) for k in honest) > 1e-2


def test_rule_registry_and_config_errors(make_args):
    assert {"median", "krum", "bulyan", "geometric_median"} <= set(aggregation_rule_names())
    mean = create_aggregation_rule(make_args())
    pairs = [(1.0, {"w": torch.zeros(1)}), (3.0, {"w": torch.ones(1)})]
    assert mean(pairs, {})["w"].item() == pytest.approx(0.75)
    with pytest.raises(
        ConfigError, match=r"defense_args\.defense_type: enable_defense is true but no type is set"
    ):
        make_args(enable_defense=True)
    with pytest.raises(ConfigError, match="unknown defense 'krumm'; did you mean krum"):
        make_args(enable_defense=True, defense_type="krumm")
    with pytest.raises(ConfigError, match=r"attack_args\.enable_attack: attacks are simulated only"):
        make_args(training_type="cross_silo", enable_attack=True, attack_type="byzantine")
    with pytest.raises(ConfigError, match="target_class_list: 1 classes but original_class_list has 2"):
        make_args(original_class_list=[0, 1], target_class_list=[1])


def test_too_few_clients_for_krum_names_the_numbers(make_args):
    with pytest.raises(
        fedml.FedMLError, match="Krum needs n >= 2f \\+ 3 updates: 5 updates, byzantine_client_num 2"
    ):
        run(
            make_args,
            client_num_per_round=5,
            enable_defense=True,
            defense_type="krum",
            byzantine_client_num=2,
        )


def test_byzantine_client_num_set_flat_sets_both_sections(make_args):
    args = make_args(byzantine_client_num=3)
    assert args.defense_args.byzantine_client_num == args.attack_args.byzantine_client_num == 3


def test_norm_clipping_measures_from_the_global_model_with_either_engine(make_args):
    # The clip is relative to the global model: with the sequential engine the shared model holds the
    # last trained client's weights when the round aggregates, which must not become the reference.
    settings = {
        "comm_round": 3,
        "enable_defense": True,
        "defense_type": "norm_diff_clipping",
        "norm_bound": 0.05,
    }
    sequential = run(make_args, engine="sequential", **settings).model_state
    vectorized = run(make_args, engine="vectorized", **settings).model_state
    assert max(float((sequential[k] - vectorized[k]).abs().max()) for k in sequential) < 1e-5
