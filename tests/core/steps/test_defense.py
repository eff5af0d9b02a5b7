import pytest
import torch
import yaml

import fedml
from fedml.core.robust import clip_to_norm, create_aggregation_rule, norm_diff_clipping, trimmed_mean
from fedml.core.steps import build_steps
from fedml.errors import ConfigError

from ...conftest import ROOT


def updates(n=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(float(i + 1), {"w": torch.randn(4, generator=generator) * (i + 1)}) for i in range(n)]


def test_clip_to_norm_clips_each_update_and_its_mean_is_norm_diff_clipping():
    pairs, origin = updates(), {"w": torch.zeros(4)}
    clipped = clip_to_norm(pairs, origin, 1.0)
    assert all(float(s["w"].norm()) <= 1.0 + 1e-6 for s in clipped)
    mean = sum(w * s["w"] for (w, _), s in zip(pairs, clipped, strict=True)) / sum(w for w, _ in pairs)
    assert torch.allclose(norm_diff_clipping(pairs, origin, 1.0)["w"], mean, atol=1e-6)


def test_a_chain_applies_its_rules_in_order(make_args):
    args = make_args(
        enable_defense=True,
        defense_type=["norm_diff_clipping", "trimmed_mean"],
        norm_bound=1.0,
        trim_param_b=0.2,
    )
    (step,) = build_steps(args).server
    assert step.describe() == "Robust aggregation: norm_diff_clipping -> trimmed_mean"
    origin = {"w": torch.zeros(4)}
    items = [fedml.core.algorithms.Update(i, w, dict(s)) for i, (w, s) in enumerate(updates())]
    kept = step.apply(items, origin, None)
    result = create_aggregation_rule(args)([(u.weight, u.state) for u in kept], origin)
    expected = trimmed_mean(
        list(zip([w for w, _ in updates()], clip_to_norm(updates(), origin, 1.0), strict=True)), 0.2
    )
    assert torch.allclose(result["w"], expected["w"], atol=1e-6)


def test_krum_first_keeps_only_the_updates_it_selects(make_args):
    args = make_args(
        enable_defense=True, defense_type=["multikrum", "median"], byzantine_client_num=1, krum_param_m=4
    )
    (step,) = build_steps(args).server
    items = [fedml.core.algorithms.Update(i, w, dict(s)) for i, (w, s) in enumerate(updates())]
    items[3].state = {"w": torch.full((4,), 1e6)}
    kept = step.apply(items, {"w": torch.zeros(4)}, None)
    assert len(kept) == 4
    assert 3 not in [u.client_idx for u in kept]


def test_an_aggregating_rule_before_another_is_refused_at_load(make_args):
    with pytest.raises(ConfigError, match="median combines the updates into one, so it can only come last"):
        make_args(enable_defense=True, defense_type=["median", "trimmed_mean"])
    with pytest.raises(ConfigError, match="unknown defense 'krumm'; did you mean krum"):
        make_args(enable_defense=True, defense_type=["krumm", "median"])


def test_a_chain_from_yaml_runs_end_to_end(make_args, tmp_path):
    config = tmp_path / "chain.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "train_args": {"comm_round": 2, "client_num_per_round": 10},
                "defense_args": {
                    "enable_defense": True,
                    "defense_type": ["norm_diff_clipping", "trimmed_mean"],
                    "norm_bound": 5.0,
                    "trim_param_b": 0.1,
                },
            }
        )
    )
    args = make_args(config)
    assert args.defense_args.defense_type == ["norm_diff_clipping", "trimmed_mean"]
    dataset, output_dim = fedml.data.load(args)
    result = fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()
    assert result.final_metrics["test_accuracy"] > 0.5


def test_preconditions_from_the_config_fail_at_load_before_a_run_directory_exists(make_args, tmp_path):
    with pytest.raises(
        ConfigError, match=r"Krum needs n >= 2f \+ 3 updates: 5 updates, byzantine_client_num 2"
    ):
        make_args(client_num_per_round=5, enable_defense=True, defense_type="krum", byzantine_client_num=2)
    with pytest.raises(
        ConfigError, match=r"Bulyan needs n >= 4f \+ 3 updates: 5 updates, byzantine_client_num 1"
    ):
        make_args(
            enable_defense=True, defense_type=["multikrum", "bulyan"], byzantine_client_num=1, krum_param_m=5
        )
    assert not (tmp_path / "runs").exists()
    make_args(
        enable_defense=True, defense_type=["multikrum", "bulyan"], byzantine_client_num=1, krum_param_m=7
    )


def test_the_robustness_guides_yaml_loads_as_written(make_args, tmp_path):
    text = (ROOT / "docs" / "robustness.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "guide.yaml"
    config.write_text(block)
    args = make_args(config)
    assert (args.defense_args.defense_type, args.attack_args.byzantine_client_num) == ("krum", 4)
