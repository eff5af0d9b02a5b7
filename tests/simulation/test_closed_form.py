import pytest
import torch
from torch import nn

from fedml.core.algorithms import FedAvg, FedProx
from fedml.ml.trainer import sgd_step
from fedml.model.linear import MLP, LogisticRegression
from fedml.simulation.closed_form import chain_of
from fedml.simulation.vectorized import _StepFunction, forward_kind

CLIENTS, BATCH = 4, 6


def case(model, seed=0):
    """Stacked perturbed parameters, the global state, a batch with padding, and distinct weights."""
    generator = torch.Generator().manual_seed(seed)
    params = {
        name: p.detach() + 0.1 * torch.randn(CLIENTS, *p.shape, generator=generator)
        for name, p in model.named_parameters()
    }
    anchor = {name: p.detach() for name, p in model.named_parameters()}
    x = torch.randn(CLIENTS, BATCH, 1, 6, 6, generator=generator)
    y = torch.randint(0, 5, (CLIENTS, BATCH), generator=generator)
    weight = torch.rand(CLIENTS, BATCH, generator=generator)
    weight[-1, 3:] = 0.0  # the last client's partial batch
    return params, anchor, x, y, weight


def autograd_step(model, objective, params, anchor, x, y, weight):
    """The same step differentiated by autograd (the folded forward): the reference."""
    step = _StepFunction(model, objective)
    step._closed = None
    assert step.forward_kind == "closed"
    return step(params, x, y, weight, anchor)


@pytest.mark.parametrize("model_type", [LogisticRegression, MLP])
@pytest.mark.parametrize("algorithm", [FedAvg(), FedProx({"fedprox_mu": 0.3})], ids=["fedavg", "fedprox"])
def test_written_out_gradients_equal_autograds(model_type, algorithm):
    torch.manual_seed(0)
    model = model_type((1, 6, 6), 5)
    objective = algorithm.local_objective()
    step = _StepFunction(model, objective)
    for seed in range(3):
        params, anchor, x, y, weight = case(model, seed)
        grads, losses = step(params, x, y, weight, anchor)
        grads = {name: g.clone() for name, g in grads.items()}  # the next call reuses the buffers
        expected_grads, expected_losses = autograd_step(model, objective, params, anchor, x, y, weight)
        assert set(grads) == set(expected_grads) == set(params)
        for name in params:
            assert float((grads[name] - expected_grads[name]).abs().max()) <= 1e-5, name
        assert float((losses - expected_losses).abs().max()) <= 1e-5
        # A padded sample's weight is 0: changing its input changes no gradient.
        x[-1, 3:] = 100.0
        padded = step(params, x, y, weight, anchor)[0]
        assert all(torch.allclose(padded[name][-1], grads[name][-1]) for name in params)


def test_relu_passes_no_gradient_where_its_output_is_zero():
    model = MLP((1, 6, 6), 5, hidden=3)
    with torch.no_grad():
        model.layers[1].bias.fill_(-1e6)  # every hidden unit of the first layer is off
    params, anchor, x, y, weight = case(model)
    params["layers.1.bias"] = params["layers.1.bias"] - 1e6
    grads, _ = _StepFunction(model, FedAvg().local_objective())(params, x, y, weight, anchor)
    assert torch.count_nonzero(grads["layers.1.weight"]) == 0
    assert torch.count_nonzero(grads["layers.5.bias"]) > 0


class MyRegression(LogisticRegression):
    def forward(self, x):
        return 2 * super().forward(x)


def frozen_bias(model):
    model.linear.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize(
    ("model", "kind"),
    [
        (MyRegression((4,), 3), "vmap"),
        (frozen_bias(LogisticRegression((4,), 3)), "vmap"),
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), "folded"),
    ],
    ids=["subclass", "frozen-bias", "plain-sequential"],
)
def test_other_models_keep_autograd(model, kind):
    assert chain_of(model) is None
    assert forward_kind(model) == kind


def test_gradients_of_one_call_survive_until_the_next():
    model = LogisticRegression((1, 6, 6), 5)
    step = _StepFunction(model, FedAvg().local_objective())
    params, anchor, x, y, weight = case(model)
    first = step(params, x, y, weight, anchor)[0]["linear.weight"].clone()
    # Fewer clients (one finished): the buffer's prefix serves, and the new gradients are right.
    fewer = {name: p[:2] for name, p in params.items()}
    second = step(fewer, x[:2], y[:2], weight[:2], anchor)[0]["linear.weight"]
    expected = autograd_step(model, FedAvg().local_objective(), fewer, anchor, x[:2], y[:2], weight[:2])[0]
    assert torch.allclose(second, expected["linear.weight"], atol=1e-6)
    assert torch.allclose(first[:2], second)  # same clients, same data, same parameters


@pytest.mark.parametrize("model_type", [LogisticRegression, MLP])
def test_descending_in_place_equals_the_gradient_then_sgd(model_type):
    torch.manual_seed(0)
    model = model_type((1, 6, 6), 5)
    step = _StepFunction(model, FedAvg().local_objective())
    rule = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    params, anchor, x, y, weight = case(model)
    expected = {name: p.clone() for name, p in params.items()}
    grads, expected_losses = step(expected, x, y, weight, anchor)
    sgd_step(list(expected.values()), [grads[name] for name in expected], [None] * len(expected), **rule)
    # Three of the four clients still train: the fourth's rows must not move.
    active = {name: p[:3] for name, p in params.items()}
    untouched = {name: p[3].clone() for name, p in params.items()}
    descending = _StepFunction(model, FedAvg().local_objective())
    losses = descending.train_step(active, x[:3], y[:3], weight[:3], anchor, [None] * len(params), rule)
    assert not descending._closed._buffers  # no gradient was written: the step descended in place
    assert float((losses - expected_losses[:3]).abs().max()) <= 1e-6
    for name, p in params.items():
        assert float((p[:3] - expected[name][:3]).abs().max()) <= 1e-6, name
        assert torch.equal(p[3], untouched[name]), name


def test_momentum_and_penalties_take_the_gradient_path():
    model = LogisticRegression((1, 6, 6), 5)
    params, anchor, x, y, weight = case(model)
    for objective, rule in [
        (FedAvg().local_objective(), {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}),
        (FedAvg().local_objective(), {"lr": 0.1, "momentum": 0.0, "weight_decay": 1e-3}),
        (FedProx({"fedprox_mu": 0.3}).local_objective(), {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}),
    ]:
        step = _StepFunction(model, objective)
        fused = {name: p.clone() for name, p in params.items()}
        reference = {name: p.clone() for name, p in params.items()}
        buffers: list = [None] * len(params)
        step.train_step(fused, x, y, weight, anchor, buffers, rule)
        grads, _ = step(reference, x, y, weight, anchor)
        sgd_step(list(reference.values()), [grads[n] for n in reference], [None] * len(params), **rule)
        assert all(torch.equal(fused[n], reference[n]) for n in params)
        assert all(b is not None for b in buffers) == bool(rule["momentum"])
