import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fedml
from fedml.core.algorithms import RoundContext, Update
from fedml.core.privacy.accountant import RDP_ORDERS, calibrate_noise, epsilon
from fedml.core.privacy.dp import clipped, delta_of, global_norm, noise_for_quantile_query
from fedml.core.privacy.dpsgd import poisson_schedule
from fedml.core.privacy.settings import privacy_plan
from fedml.core.privacy.steps import CentralDP, LocalDP, PrivacyAccountant
from fedml.core.steps import build_steps, check_compatibility
from fedml.errors import ConfigError, PrivacyError
from fedml.ml import ServerAggregator

SMALL = {"comm_round": 3, "plots": False, "quiet": True}


def run(args):
    dataset, output_dim = fedml.data.load(args)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()


def dp(mode, **more):
    return {"enable_dp": True, "dp_solution_type": mode, **more}


def max_diff(a, b):
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


vectors = st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(vectors, vectors, st.floats(1e-3, 1e3))
def test_clipping_bounds_every_delta_and_keeps_its_direction(values, other, bound):
    n = min(len(values), len(other))
    state = {"w": torch.tensor(values[:n]), "step": torch.tensor(7)}
    reference = {"w": torch.tensor(other[:n]), "step": torch.tensor(1)}
    result, norm = clipped(state, reference, bound)
    # The clipped state is stored in float32: re-differencing it loses up to an ulp of the values.
    rounding = 2 * math.sqrt(n) * 2**-23 * float(torch.cat([state["w"], reference["w"]]).abs().max())
    after = global_norm(delta_of(result, reference))
    assert after <= bound * (1 + 1e-6) + rounding
    assert math.isclose(norm, global_norm(delta_of(state, reference)), rel_tol=1e-9)
    assert torch.equal(result["step"], state["step"])
    if norm <= bound:
        assert torch.equal(result["w"], state["w"])
    else:
        expected = (state["w"] - reference["w"]).double() * (bound / norm)
        assert float((result["w"] - reference["w"]).double().sub(expected).norm()) <= rounding + 1e-9


def test_local_noise_has_the_formula_std_and_is_seeded_per_round_and_client(make_args):
    args = make_args(**dp("ldp", noise_multiplier=0.7, clipping_norm=2.0))
    (step,) = build_steps(args).client
    zeros = {"w": torch.zeros(200_000)}
    ctx = RoundContext(3, args, torch.device("cpu"), None, None)
    noisy = step.finish(Update(5, 1.0, dict(zeros)), zeros, ctx).state["w"]
    again = step.finish(Update(5, 1.0, dict(zeros)), zeros, ctx).state["w"]
    other = step.finish(Update(6, 1.0, dict(zeros)), zeros, ctx).state["w"]
    assert float(noisy.std()) == pytest.approx(0.7 * 2.0, rel=0.01)
    assert abs(float(noisy.mean())) < 0.01
    assert torch.equal(noisy, again)
    assert not torch.equal(noisy, other)


def test_central_noise_on_the_mean_has_std_multiplier_times_clip_over_clients(make_args):
    args = make_args(**dp("cdp", noise_multiplier=1.5, clipping_norm=4.0))
    step = next(s for s in build_steps(args).server if isinstance(s, CentralDP))
    model = torch.nn.Linear(400, 500)
    aggregator = ServerAggregator(model, args)
    global_state = aggregator.get_model_params()
    updates = [Update(c, 10.0 * (c + 1), {k: v.clone() for k, v in global_state.items()}) for c in range(8)]
    ctx = RoundContext(0, args, torch.device("cpu"), None, aggregator)
    kept = step.apply(updates, global_state, ctx)
    assert [u.weight for u in kept] == [1.0] * 8
    noisy = step.wrap_aggregator(aggregator, kept, ctx).aggregate_with_hooks(
        [(u.weight, u.state) for u in kept]
    )
    noise = noisy["weight"] - global_state["weight"]
    assert float(noise.std()) == pytest.approx(1.5 * 4.0 / 8, rel=0.01)


def test_a_clipped_client_moves_the_central_mean_by_at_most_clip_over_clients(make_args):
    args = make_args(**dp("cdp", noise_multiplier=0.0, clipping_norm=0.5))
    step = next(s for s in build_steps(args).server if isinstance(s, CentralDP))
    aggregator = ServerAggregator(torch.nn.Linear(3, 2), args)
    global_state = aggregator.get_model_params()
    honest = [Update(c, 1.0, {k: v.clone() for k, v in global_state.items()}) for c in range(4)]
    outlier = Update(9, 1e6, {k: v + 1e3 for k, v in global_state.items()})
    ctx = RoundContext(0, args, torch.device("cpu"), None, aggregator)
    kept = step.apply([*honest, outlier], global_state, ctx)
    mean = step.wrap_aggregator(aggregator, kept, ctx).aggregate_with_hooks(
        [(u.weight, u.state) for u in kept]
    )
    assert global_norm(delta_of(mean, global_state)) == pytest.approx(0.5 / 5, rel=1e-5)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target", [1.0, 4.0])
def test_the_calibrated_noise_meets_the_target_epsilon_tightly(target, accountant):
    noise = calibrate_noise(target, 1e-5, 0.1, 200, accountant)
    assert epsilon([(noise, 0.1, 200)], 1e-5, accountant) <= target
    assert epsilon([(noise * 0.97, 0.1, 200)], 1e-5, accountant) > target


GRID = [
    (z, q, n, d)
    for z in (0.8, 1.5, 4.0)
    for q in (0.01, 0.2, 1.0)
    for n in (1, 50, 500)
    for d in (1e-5, 1e-3)
]


def test_the_reported_epsilon_is_the_reference_accountants_on_a_grid(caplog):
    from dp_accounting import dp_event, rdp

    compared = 0
    for z, q, steps, delta in GRID:
        caplog.clear()
        reference = rdp.RdpAccountant(orders=list(RDP_ORDERS))
        reference.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), steps)
        expected = reference.get_epsilon(delta)
        ours = epsilon([(z, q, steps)], delta)
        # Where the reference drops orders it cannot compute (it logs so), it can only be looser.
        if any("Excluding this order" in r.getMessage() for r in caplog.records):
            assert ours <= expected * (1 + 1e-6), (z, q, steps, delta)
            continue
        compared += 1
        # The two libraries turn RDP into (epsilon, delta) with slightly different bounds.
        assert ours == pytest.approx(expected, rel=5e-3), (z, q, steps, delta)
    assert compared >= len(GRID) * 3 // 4


def test_noise_zero_gives_an_infinite_epsilon_and_an_empty_history_none():
    assert epsilon([(0.0, 0.1, 3)], 1e-5) == math.inf
    assert epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize("mode", ["ldp", "cdp"])
def test_dp_with_noise_zero_and_a_huge_clip_is_the_plain_run_bit_for_bit(make_args, mode):
    # Equal client sizes: central DP's equal weights are then FedAvg's sample weights.
    common = {**SMALL, "partition_method": "homo", "engine": "sequential"}
    plain = run(make_args(**common))
    private = run(make_args(**common, **dp(mode, noise_multiplier=0.0, clipping_norm=1e9)))
    for name, tensor in plain.model_state.items():
        assert torch.equal(tensor, private.model_state[name]), name
    assert private.final_metrics["epsilon"] == math.inf


def test_epsilon_and_delta_are_in_every_record_and_the_summary(make_args):
    result = run(make_args(**SMALL, **dp("cdp", noise_multiplier=1.0, client_num_per_round=5)))
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in records]
    assert eps == sorted(eps)
    assert eps[0] > 0
    assert eps[-1] == pytest.approx(epsilon([(1.0, 0.5, 3)], 1e-5))
    assert all(r["delta"] == 1e-5 for r in records)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["final_metrics"]["epsilon"] == pytest.approx(eps[-1])


def test_local_dp_accounts_each_client_by_the_rounds_it_took_part_in(make_args):
    result = run(
        make_args(**{**SMALL, "comm_round": 4}, **dp("ldp", noise_multiplier=2.0, client_num_per_round=3))
    )
    counts: dict[int, int] = {}
    for round_idx in range(4):
        for client in fedml.core.sampling.sample_clients(0, round_idx, 10, 3):
            counts[client] = counts.get(client, 0) + 1
    # Sensitivity twice the clip: any two inputs of a client.
    assert result.final_metrics["epsilon"] == pytest.approx(epsilon([(1.0, 1.0, max(counts.values()))], 1e-5))


def test_a_target_epsilon_is_met_after_the_last_round(make_args):
    args = make_args(**{**SMALL, "comm_round": 6}, **dp("cdp", epsilon=3.0, client_num_per_round=4))
    result = run(args)
    assert 2.9 <= result.final_metrics["epsilon"] <= 3.0


def test_max_epsilon_stops_training_before_the_budget_is_exceeded(make_args):
    per_round = [epsilon([(0.5, 1.0, n)], 1e-5) for n in range(1, 6)]
    budget = (per_round[2] + per_round[3]) / 2
    result = run(
        make_args(
            **{**SMALL, "comm_round": 5},
            frequency_of_the_test=2,
            **dp("ldp", noise_multiplier=1.0, max_epsilon=budget),
        )
    )
    assert result.final_metrics["round"] == 3
    assert result.final_metrics["epsilon"] == pytest.approx(per_round[2])
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert "dp_args.max_epsilon" in summary["stopped_early"]
    assert summary["status"] == "finished"


def test_ldp_trains_the_same_model_in_both_engines(make_args):
    settings_ = {**SMALL, **dp("ldp", noise_multiplier=0.05, clipping_norm=0.5)}
    sequential = run(make_args(engine="sequential", **settings_)).model_state
    vectorized = run(make_args(engine="vectorized", **settings_)).model_state
    assert max_diff(sequential, vectorized) <= 1e-5


def test_adaptive_clipping_moves_the_bound_towards_the_quantile(make_args):
    args = make_args(
        **SMALL,
        **dp(
            "cdp", noise_multiplier=0.5, clipping_norm=100.0, adaptive_clipping=True, clip_learning_rate=1.0
        ),
    )
    step = next(s for s in build_steps(args).server if isinstance(s, CentralDP))
    assert step.update_noise == pytest.approx(noise_for_quantile_query(0.5, 10 / 20))
    aggregator = ServerAggregator(torch.nn.Linear(3, 2), args)
    global_state = aggregator.get_model_params()
    updates = [Update(c, 1.0, {k: v + 0.01 * (c + 1) for k, v in global_state.items()}) for c in range(10)]
    bounds = []
    for round_idx in range(40):
        step.apply(
            updates, global_state, RoundContext(round_idx, args, torch.device("cpu"), None, aggregator)
        )
        bounds.append(step.clipping_norm)
    norms = sorted(global_norm(delta_of(u.state, global_state)) for u in updates)
    assert bounds[-1] < 1.0 < bounds[0]
    assert norms[1] <= bounds[-1] <= norms[-2]


def test_a_dp_run_resumes_with_its_ledger(make_args, tmp_path):
    settings_ = {
        **SMALL,
        **dp(
            "cdp",
            noise_multiplier=1.0,
            adaptive_clipping=True,
            clipped_count_stddev=2.0,
            client_num_per_round=5,
        ),
    }
    straight = run(make_args(**{**settings_, "comm_round": 4}))
    first = run(make_args(**{**settings_, "comm_round": 2, "checkpoint_frequency": 1}))
    resumed = run(
        make_args(**{**settings_, "comm_round": 4, "resume_from": str(first.run_dir / "checkpoint.pt")})
    )
    assert resumed.final_metrics["epsilon"] == pytest.approx(straight.final_metrics["epsilon"])
    assert max_diff(resumed.model_state, straight.model_state) <= 1e-6


def test_resuming_a_plain_checkpoint_with_dp_is_refused(make_args):
    first = run(make_args(**{**SMALL, "comm_round": 2}, checkpoint_frequency=1))
    args = make_args(
        **{**SMALL, "comm_round": 4},
        resume_from=str(first.run_dir / "checkpoint.pt"),
        **dp("ldp", noise_multiplier=1.0),
    )
    with pytest.raises(ConfigError, match="holds no state of the DP accountant step"):
        run(args)


def test_settings_that_cannot_be_honoured_are_refused_at_start(make_args):
    with pytest.raises(PrivacyError, match="SCAFFOLD's server rule"):
        run(make_args(**SMALL, federated_optimizer="SCAFFOLD", **dp("cdp", noise_multiplier=1.0)))
    with pytest.raises(PrivacyError, match="defense_type krum"):
        run(
            make_args(
                **SMALL,
                enable_defense=True,
                defense_type="krum",
                byzantine_client_num=1,
                **dp("cdp", noise_multiplier=1.0),
            )
        )
    with pytest.raises(PrivacyError, match="clipped_count_stddev"):
        privacy_plan(
            make_args(**dp("cdp", noise_multiplier=2.0, adaptive_clipping=True, clipped_count_stddev=0.5))
        )
    with pytest.raises(PrivacyError, match="infinite epsilon"):
        privacy_plan(make_args(**dp("ldp", noise_multiplier=0.0, max_epsilon=1.0)))


@pytest.mark.parametrize("mode", ["cdp", "dpsgd"])
def test_a_backend_that_sums_updates_refuses_dp_that_needs_each_one(make_args, mode):
    steps = build_steps(make_args(**dp(mode, noise_multiplier=1.0)))
    algorithm = fedml.core.algorithms.create_algorithm(make_args())
    with pytest.raises(PrivacyError, match=r"comm_args\.backend NCCL"):
        check_compatibility(steps, algorithm, "NCCL", presummed=True)


def test_ldp_runs_behind_a_summing_backend_with_a_bound_by_rounds(make_args):
    steps = build_steps(make_args(**dp("ldp", noise_multiplier=1.0)))
    algorithm = fedml.core.algorithms.create_algorithm(make_args())
    check_compatibility(steps, algorithm, "NCCL", presummed=True)
    (accountant,) = [s for s in steps.server if isinstance(s, PrivacyAccountant)]
    summed = fedml.core.algorithms.SummedUpdate(3, 30.0, {})
    for round_idx in range(4):
        accountant.account(round_idx, summed)
    assert accountant.epsilon() == pytest.approx(epsilon([(0.5, 1.0, 4)], 1e-5))


@pytest.mark.parametrize(
    ("settings_", "key"),
    [
        (dp("cdp"), "dp_args.noise_multiplier"),
        (dp("cdp", noise_multiplier=1.0, epsilon=2.0), "dp_args.noise_multiplier"),
        ({"enable_dp": True, "noise_multiplier": 1.0}, "dp_args.dp_solution_type"),
        (dp("ldp", noise_multiplier=1.0, adaptive_clipping=True), "dp_args.adaptive_clipping"),
        (dp("cdp", epsilon=2.0, max_epsilon=1.0), "dp_args.max_epsilon"),
    ],
)
def test_an_incomplete_dp_section_is_a_config_error_naming_the_key(make_args, settings_, key):
    with pytest.raises(ConfigError, match=key):
        make_args(**settings_)


def test_local_dp_describes_itself(make_args):
    (step,) = build_steps(make_args(**dp("ldp", noise_multiplier=0.5, clipping_norm=2.0))).client
    assert isinstance(step, LocalDP)
    assert step.describe() == (
        "Local DP: each client clips its delta to 2 and adds Gaussian noise of std 1 (noise multiplier 0.5)"
    )


def test_dpsgd_is_accounted_per_client_from_what_each_trainer_reports(make_args):
    args = make_args(**{**SMALL, "comm_round": 2}, **dp("dpsgd", noise_multiplier=1.2))
    dataset, output_dim = fedml.data.load(args)
    result = fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()
    assert result.engine == "sequential"
    worst = 0.0
    for client in range(10):
        rate, steps = poisson_schedule(dataset.local_sample_num(client), args.batch_size, args.epochs)
        worst = max(worst, epsilon([(1.2, rate, 2 * steps)], 1e-5))
    assert result.final_metrics["epsilon"] == pytest.approx(worst)


def test_dpsgd_calibrates_each_client_for_the_target_epsilon(make_args):
    result = run(make_args(**{**SMALL, "comm_round": 2}, **dp("dpsgd", epsilon=6.0)))
    assert 5.4 <= result.final_metrics["epsilon"] <= 6.0


def test_dpsgd_refuses_a_custom_trainer(make_args):
    args = make_args(**SMALL, **dp("dpsgd", noise_multiplier=1.0))
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    with pytest.raises(PrivacyError, match="cannot wrap a custom ClientTrainer"):
        fedml.FedMLRunner(
            args, torch.device("cpu"), dataset, model, client_trainer=fedml.ClientTrainer(model, args)
        ).run()


def test_replies_of_a_round_given_up_are_charged_to_their_clients_but_release_no_model(make_args):
    steps = build_steps(make_args(**dp("ldp", noise_multiplier=1.0)))
    (accountant,) = [s for s in steps.server if isinstance(s, PrivacyAccountant)]
    replies = [Update(3, 1.0, {}), Update(4, 1.0, {})]
    accountant.account(0, replies, aggregated=False)
    accountant.account(0, [Update(3, 1.0, {})])
    assert accountant.rounds == 1
    assert accountant.epsilon() == pytest.approx(epsilon([(0.5, 1.0, 2)], 1e-5))
