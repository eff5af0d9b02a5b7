import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import fedml
from fedml.core.algorithms import FedAvg
from fedml.simulation.batched_forward import batched_forward, register_batched_layer, unsupported_layer
from fedml.simulation.vectorized import _StepFunction, forward_kind, probe

CLIENTS = 3


def stacked_params(model, clients=CLIENTS, seed=0):
    """Every trainable parameter stacked, each client's row a different random perturbation."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.stack(
            [p.detach() + 0.1 * torch.randn(p.shape, generator=generator) for _ in range(clients)]
        )
        for name, p in model.named_parameters()
    }


def one_by_one(model, params, x):
    return torch.stack(
        [functional_call(model, {n: p[k] for n, p in params.items()}, (x[k],)) for k in range(x.shape[0])]
    )


def model_named(name, shape):
    return fedml.model.create(type("A", (), {"model": name, "random_seed": 0})(), 5, input_shape=shape)


MODELS = [
    ("cnn", (1, 12, 12)),
    ("cnn", (3, 16, 16)),
    ("resnet20", (3, 8, 8)),
    ("resnet18", (3, 8, 8)),
    ("mobilenet_v2", (3, 8, 8)),
]


@pytest.mark.parametrize(
    ("name", "shape"), MODELS, ids=["cnn-mnist", "cnn-cifar", "resnet20", "resnet18", "mobilenet_v2"]
)
def test_batched_forward_and_gradients_equal_each_client_alone(name, shape):
    model = model_named(name, shape)
    assert unsupported_layer(model) is None
    params = stacked_params(model)
    x = torch.randn(CLIENTS, 4, *shape, generator=torch.Generator().manual_seed(1))
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    folded = batched_forward(model, leaves, x)
    reference_leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    reference = one_by_one(model, reference_leaves, x)
    assert folded.shape == reference.shape == (CLIENTS, 4, 5)
    # torch's float32 tolerances (1e-5 plus 1.3e-6 of each value): grouped and per-client convolutions
    # sum in different orders, and on some CPUs logits of about 18 came out 1.1e-5 apart.
    torch.testing.assert_close(folded, reference)
    weights = torch.randn(reference.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((folded * weights).sum(), list(leaves.values()))
    expected = torch.autograd.grad((reference * weights).sum(), list(reference_leaves.values()))
    for name_, got, want in zip(leaves, grads, expected, strict=True):
        assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max())), name_


def test_flattened_inputs_are_folded_like_images():
    model = model_named("cnn", (1, 12, 12))
    params = stacked_params(model)
    images = torch.randn(CLIENTS, 2, 1, 12, 12)
    flat = images.flatten(2)
    assert torch.equal(batched_forward(model, params, flat), batched_forward(model, params, images))


@settings(max_examples=25, deadline=None)
@given(
    in_groups=st.integers(1, 2),
    out_per_group=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 1),
    dilation=st.integers(1, 2),
    bias=st.booleans(),
    norm_groups=st.integers(1, 2),
    clients=st.integers(1, 4),
)
def test_any_grouped_strided_convolution_batches_exactly(
    in_groups, out_per_group, kernel, stride, padding, dilation, bias, norm_groups, clients
):
    channels, out = 2 * in_groups, 2 * in_groups * out_per_group * norm_groups
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(channels, out, kernel, stride, padding, dilation, groups=in_groups, bias=bias),
        nn.GroupNorm(norm_groups, out),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * out, 3, bias=bias),
    )
    params = stacked_params(model, clients)
    x = torch.randn(clients, 2, channels, 7, 7)
    assert float((batched_forward(model, params, x) - one_by_one(model, params, x)).abs().max()) <= 1e-5


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class MyConv(nn.Conv2d):
    pass


def frozen_bias(module):
    module.bias.requires_grad_(False)
    return module


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (nn.Sequential(nn.Conv2d(1, 2, 3), Doubler()), "1 (Doubler) has no batched implementation"),
        (nn.Sequential(MyConv(1, 2, 3)), "0 (MyConv) has no batched implementation"),
        (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "padding_mode 'reflect'"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(0)), "flattens other than dims 1 to -1"),
        (nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2).requires_grad_(False)), "frozen affine"),
        (nn.Sequential(frozen_bias(nn.Conv2d(1, 2, 3))), "0 (Conv2d) has a frozen bias"),
        (nn.Sequential(nn.Flatten(), frozen_bias(nn.Linear(4, 2))), "1 (Linear) has a frozen bias"),
    ],
    ids=["unknown-layer", "subclass", "padding-mode", "flatten-dims", "frozen-norm", "conv-bias", "fc-bias"],
)
def test_unsupported_layers_are_named_and_fall_back_to_vmap(model, reason):
    found = unsupported_layer(model)
    assert found is not None
    assert reason in found
    assert forward_kind(model) == "vmap"


def test_a_forward_hook_falls_back_to_vmap():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    model[0].register_forward_hook(lambda module, inputs, output: output * 0)
    assert "forward hooks" in unsupported_layer(model)
    assert forward_kind(model) == "vmap"


def test_a_registered_layer_makes_its_model_batch():
    class Halver(nn.Module):
        def forward(self, x):
            return x / 2

    model = nn.Sequential(nn.Conv2d(1, 2, 3), Halver(), nn.Flatten())
    assert forward_kind(model) == "vmap"
    register_batched_layer(Halver, lambda folded, module, prefix, h: h / 2)
    assert forward_kind(model) == "folded"
    params = stacked_params(model)
    x = torch.randn(CLIENTS, 2, 1, 5, 5)
    assert float((batched_forward(model, params, x) - one_by_one(model, params, x)).abs().max()) <= 1e-6


@pytest.mark.parametrize(
    ("name", "shape", "kind"),
    [("lr", (1, 8, 8), "closed"), ("mlp", (1, 8, 8), "closed"), ("cnn", (1, 8, 8), "folded")],
)
def test_the_built_in_models_take_the_fastest_path(name, shape, kind):
    model = model_named(name, shape)
    assert forward_kind(model) == kind
    assert _StepFunction(model, FedAvg().local_objective()).forward_kind == kind


def test_the_probe_runs_the_folded_forward():
    model = model_named("resnet20", (3, 8, 8))
    assert forward_kind(model) == "folded"
    assert probe(model, torch.randn(3, 8, 8), FedAvg().local_objective()) is None


class TwiceLinear(nn.Module):
    """One linear layer applied twice: its weight gets two gradient contributions per pass."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(self.linear(self.conv(x).flatten(1)))


register_batched_layer(
    TwiceLinear,
    lambda folded, module, prefix, h: folded(
        module.linear,
        f"{prefix}linear.",
        folded(module.linear, f"{prefix}linear.", folded(module.conv, f"{prefix}conv.", h).flatten(1)),
    ),
)


def test_reused_gradient_buffers_give_each_call_its_own_gradients():
    torch.manual_seed(0)
    model = TwiceLinear()
    assert forward_kind(model) == "folded"
    workspace = {}
    for step in range(3):
        params = stacked_params(model, seed=step)
        x = torch.randn(CLIENTS, 2, 1, 2, 2)
        leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
        grads = torch.autograd.grad(batched_forward(model, leaves, x, workspace).sum(), list(leaves.values()))
        fresh = {n: p.clone().requires_grad_() for n, p in params.items()}
        expected = torch.autograd.grad(one_by_one(model, fresh, x).sum(), list(fresh.values()))
        for got, want in zip(grads, expected, strict=True):
            assert float((got - want).abs().max()) <= 1e-5
    assert set(workspace) == {"linear.weight"}  # the second use of the layer got a fresh tensor


def test_running_an_unsupported_model_batched_names_the_module():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), Doubler())
    with pytest.raises(fedml.errors.NotSupportedError, match=r"^1: Doubler has no batched implementation"):
        batched_forward(model, stacked_params(model), torch.randn(CLIENTS, 2, 1, 5, 5))


def test_relus_run_in_place_only_on_outputs_that_no_backward_keeps():
    # The first ReLU may overwrite the linear layer's new output; the second must not overwrite the
    # first's, which the first's backward reads (autograd would refuse the step).
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 3))
    params = stacked_params(model)
    x = torch.randn(CLIENTS, 5, 2, 3, generator=torch.Generator().manual_seed(2))
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    folded = batched_forward(model, leaves, x)
    reference_leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    reference = one_by_one(model, reference_leaves, x)
    torch.testing.assert_close(folded, reference)
    grads = torch.autograd.grad(folded.square().sum(), list(leaves.values()))
    expected = torch.autograd.grad(reference.square().sum(), list(reference_leaves.values()))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
