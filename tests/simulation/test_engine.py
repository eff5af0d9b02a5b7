import math

import pytest
import torch

import fedml
from fedml.core.algorithms import FedAvg, FedProx
from fedml.simulation.engine import StepCosts, auto_prefers_vectorized, measure_step_costs


class FakeClock:
    """Each reading is ``tick`` seconds after the previous one."""

    def __init__(self, tick):
        self.now, self.tick, self.readings = 0.0, tick, 0

    def __call__(self):
        self.readings += 1
        self.now += self.tick
        return self.now


def lr_and_batch(make_args, **overrides):
    args = make_args(model="lr", client_num_per_round=10, **overrides)
    dataset, output_dim = fedml.data.load(args)
    x, y = next(iter(dataset.test_global.batches(args.batch_size)))
    return args, fedml.model.create(args, output_dim), x, y


@pytest.mark.parametrize(
    ("batched", "sequential", "expected"),
    [(0.001, 0.010, True), (0.009, 0.010, True), (0.010, 0.010, False), (0.020, 0.010, False)],
)
def test_the_cheaper_step_wins(batched, sequential, expected):
    assert StepCosts(10, batched, sequential).prefers_vectorized is expected


def test_a_gpu_vectorizes_and_one_client_does_not(make_args):
    args = make_args(client_num_per_round=1)
    cheap = StepCosts(1, 0.001, 0.010)
    assert auto_prefers_vectorized(args, torch.device("cuda"), None)
    assert not auto_prefers_vectorized(args, torch.device("cpu"), cheap)
    assert auto_prefers_vectorized(make_args(client_num_per_round=2), torch.device("cpu"), cheap)


def test_a_slow_step_is_timed_for_fewer_clients_and_scaled(make_args):
    args, model, x, y = lr_and_batch(make_args)
    clock = FakeClock(tick=0.2)  # every step "takes" 0.2 s: over the budget after one repetition
    costs = measure_step_costs(model, FedAvg().local_objective(), x, y, args, clock=clock)
    # 2 stacked clients (the fewest) scaled to 10; the sequential step times 10 clients.
    assert costs == StepCosts(10, pytest.approx(0.2 * 10 / 2), pytest.approx(0.2 * 10))
    assert clock.readings == 5  # start, after the warm-up, then one timed repetition (3 readings)


def test_a_fast_step_is_repeated_and_the_fastest_kept(make_args):
    args, model, x, y = lr_and_batch(make_args)
    clock = FakeClock(tick=1e-6)
    costs = measure_step_costs(model, FedAvg().local_objective(), x, y, args, clock=clock)
    assert clock.readings == 2 + 3 * 3
    assert costs.batched == pytest.approx(1e-6)
    assert costs.sequential == pytest.approx(1e-5)


@pytest.mark.parametrize("name", ["FedAvg", "FedProx"])
def test_measuring_leaves_the_model_untouched(make_args, name):
    args, model, x, y = lr_and_batch(
        make_args, momentum=0.9, weight_decay=0.01, federated_optimizer=name, fedprox_mu=0.1
    )
    algorithm = FedProx(args) if name == "FedProx" else FedAvg(args)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    costs = measure_step_costs(model, algorithm.local_objective(), x, y, args)
    assert costs.clients == 10
    assert all(math.isfinite(t) and t > 0 for t in (costs.batched, costs.sequential))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
