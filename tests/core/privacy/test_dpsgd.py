import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F  # noqa: N812

from fedml.core.algorithms import Client, RoundContext
from fedml.core.algorithms.base import local_steps, train_locally
from fedml.core.algorithms.fedprox import FedProx
from fedml.core.privacy.dpsgd import DPSGDTrainer
from fedml.data.dataset import ClientData
from fedml.errors import PrivacyError
from fedml.ml import ClientTrainer

CPU = torch.device("cpu")
OPACUS_ATTRS = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample", "_norm_sample")


def blobs(n: int, dim: int = 4, seed: int = 0) -> ClientData:
    """Two Gaussian classes centred at -1.5 and +1.5 in every coordinate."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, dim, generator=g) + 1.5 * (2.0 * y[:, None] - 1.0)
    return ClientData(x, y, torch.arange(n), batch_size=10)


def linear(dim: int = 4, classes: int = 2, seed: int = 0, bias: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(dim, classes, bias=bias)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def dp_trainer(model, args, *, clip=1.0, sigma=0.0, seeded=True) -> DPSGDTrainer:
    return DPSGDTrainer(model, args, clipping_norm=clip, noise_multiplier_for=lambda n: sigma, seeded=seeded)


def plain_sgd(make_args, **overrides):
    base = {"epochs": 1, "learning_rate": 1.0, "momentum": 0.0, "weight_decay": 0.0}
    return make_args(**{**base, **overrides})


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("quantile", [0.25, 0.75])
def test_each_sample_is_clipped_before_averaging(make_args, quantile):
    data = blobs(8)
    model = linear()
    x, y = data.tensors()
    per = per_sample_grads(model, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per.values()))
    clip = float(norms.quantile(quantile))
    factor = torch.clamp(clip / norms, max=1.0)
    expected = {k: (factor.view(-1, *[1] * (g.dim() - 1)) * g).mean(0) for k, g in per.items()}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    # batch_size >= n: every sample is in the one step (q = 1), so the step is deterministic.
    args = plain_sgd(make_args, batch_size=8)

    dp_trainer(model, args, clip=clip).train(data, CPU, args)

    applied = {k: before[k] - v.detach() for k, v in model.named_parameters()}
    assert (norms > clip).any()
    assert (norms < clip).any()
    for k in expected:
        torch.testing.assert_close(applied[k], expected[k], atol=1e-5, rtol=1e-4)
    # Clipping the averaged gradient instead would give another step.
    mean = {k: g.mean(0) for k, g in per.items()}
    mean_norm = torch.sqrt(sum(g.pow(2).sum() for g in mean.values()))
    batch_clipped = {k: g * min(1.0, clip / float(mean_norm)) for k, g in mean.items()}
    assert not all(torch.allclose(applied[k], batch_clipped[k], atol=1e-4) for k in expected)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 12),
    scale=st.floats(0.01, 100.0),
    clip=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**16),
)
def test_a_step_without_noise_moves_at_most_the_clipping_norm(make_args, n, scale, clip, seed):
    # The step is a mean of vectors of norm <= C, whatever the data and however large its gradients.
    data = blobs(n, seed=seed)
    data.x.mul_(scale)
    model = linear(seed=seed)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    args = plain_sgd(make_args, batch_size=16)

    dp_trainer(model, args, clip=clip).train(data, CPU, args)

    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) <= clip * (1 + 1e-5)


@pytest.mark.parametrize("batch_size", [1, 10])
def test_noise_std_matches_the_formula(make_args, batch_size):
    # Zero inputs and no bias: every per-sample gradient is zero, so the steps are the noise alone. With
    # batch_size 1 about a third of the Poisson batches are empty, and they must be noised too.
    n, sigma, clip = 40, 1.3, 0.7
    data = ClientData(torch.zeros(n, 50), torch.arange(n) % 20, torch.arange(n), batch_size)
    model = linear(50, 20, bias=False)
    before = model.weight.detach().clone()
    args = plain_sgd(make_args, batch_size=batch_size)

    metrics = dp_trainer(model, args, clip=clip, sigma=sigma).train(data, CPU, args)

    moved = (model.weight.detach() - before).flatten()
    steps = metrics["num_steps"]
    assert steps == math.ceil(n / batch_size)
    per_step_std = float(moved.std()) / math.sqrt(steps)
    assert per_step_std == pytest.approx(sigma * clip / batch_size, rel=0.1)
    assert abs(float(moved.mean())) < 4 * float(moved.std()) / math.sqrt(moved.numel())


def test_seeded_runs_repeat_and_unseeded_runs_differ(make_args):
    data = blobs(30)
    args_for = {b: make_args(batch_size=b, learning_rate=0.1, random_seed=7) for b in (6, 30)}

    def run(seeded: bool, sigma: float = 0.8, batch_size: int = 6, client: int = 0, round_idx: int = 0):
        args = args_for[batch_size]
        trainer = dp_trainer(mlp(), args, sigma=sigma, seeded=seeded)
        trainer.set_id(client)
        trainer.set_round(round_idx)
        trainer.train(data, CPU, args)
        return trainer.get_model_params()

    def same(a, b) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    first = run(True)
    assert same(first, run(True))
    assert not same(first, run(True, client=1))
    assert not same(first, run(True, round_idx=1))
    assert not same(run(False), run(False))
    # Each source on its own: the noise with every sample in every batch, the sampling without noise.
    assert not same(run(False, batch_size=30), run(False, batch_size=30))
    assert not same(run(False, sigma=0.0), run(False, sigma=0.0))
    assert same(run(True, sigma=0.0), run(True, sigma=0.0))


@pytest.mark.parametrize(("n", "batch_size", "epochs"), [(50, 8, 2), (5, 8, 3), (23, 1, 1)])
def test_metrics_are_what_ran(make_args, monkeypatch, n, batch_size, epochs):
    noised, rates, asked = [], [], []
    add_noise, sampler_init = DPOptimizer.add_noise, UniformWithReplacementSampler.__init__

    def spy_noise(self):
        noised.append((self.noise_multiplier, self.max_grad_norm, self.expected_batch_size))
        add_noise(self)

    def spy_sampler(self, **kwargs):
        rates.append(kwargs["sample_rate"])
        sampler_init(self, **kwargs)

    def noise_for(samples: int) -> float:
        asked.append(samples)
        return 0.37

    monkeypatch.setattr(DPOptimizer, "add_noise", spy_noise)
    monkeypatch.setattr(UniformWithReplacementSampler, "__init__", spy_sampler)
    args = make_args(epochs=epochs, batch_size=batch_size)
    trainer = DPSGDTrainer(mlp(), args, clipping_norm=1.5, noise_multiplier_for=noise_for, seeded=True)

    metrics = trainer.train(blobs(n), CPU, args)

    assert asked == [n]
    assert metrics["num_steps"] == epochs * math.ceil(n / batch_size) == len(noised)
    assert metrics["dp_sample_rate"] == min(1.0, batch_size / n) == rates[0]
    assert metrics["dp_noise_multiplier"] == 0.37
    assert set(noised) == {(0.37, 1.5, min(batch_size, n))}
    assert metrics["num_samples"] == n
    assert math.isfinite(metrics["train_loss"])


def assert_plain_module(model: nn.Module) -> None:
    for p in model.parameters():
        assert p.grad is None
        assert not [a for a in OPACUS_ATTRS if hasattr(p, a)]
    for module in model.modules():
        hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks)
        assert not any(hooks)
        assert not module._backward_pre_hooks


def test_hooks_are_gone_and_the_model_trains_normally_afterwards(make_args):
    data = blobs(40)
    args = make_args(epochs=1, batch_size=8)
    model = mlp()
    dp = dp_trainer(model, args, sigma=0.5)
    dp.train(data, CPU, args)
    assert_plain_module(model)
    fresh = mlp(seed=1)
    fresh.load_state_dict(dp.get_model_params())

    used, unused = ClientTrainer(model, args), ClientTrainer(fresh, args)
    used.train(data, CPU, args)
    unused.train(data, CPU, args)

    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(), strict=True))
    assert model.state_dict().keys() == fresh.state_dict().keys()


def test_hooks_are_removed_when_training_fails(make_args):
    args = make_args(epochs=1, batch_size=8)
    model = mlp()
    bad = blobs(16)
    bad.y[:] = 5  # out of range for two classes: cross_entropy raises mid-training

    with pytest.raises(IndexError):
        dp_trainer(model, args, sigma=0.5).train(bad, CPU, args)

    assert_plain_module(model)


@pytest.mark.parametrize(
    ("optimizer", "overrides"),
    [("sgd", {"momentum": 0.9, "weight_decay": 0.01}), ("adam", {"learning_rate": 0.05})],
)
def test_no_noise_and_a_huge_clip_is_the_non_private_full_batch_run(make_args, optimizer, overrides):
    data = blobs(12)
    args = make_args(epochs=3, batch_size=16, client_optimizer=optimizer, **overrides)
    dp_model, plain_model = mlp(), mlp()

    dp_metrics = dp_trainer(dp_model, args, clip=1e9).train(data, CPU, args)
    plain_metrics = ClientTrainer(plain_model, args).train(data, CPU, args)

    for a, b in zip(dp_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert dp_metrics["train_loss"] == pytest.approx(plain_metrics["train_loss"], rel=1e-5)


def test_the_fedprox_penalty_is_in_the_loss(make_args):
    data = blobs(12)
    args = make_args(epochs=4, batch_size=16, federated_optimizer="FedProx", fedprox_mu=2.0)
    objective = FedProx(args).local_objective()
    global_state = {k: v.detach().clone() for k, v in mlp().state_dict().items()}
    client = Client(0, data)
    dp = dp_trainer(mlp(), args, clip=1e9)
    plain = ClientTrainer(mlp(), args)

    with_penalty = [
        train_locally(global_state, client, RoundContext(0, args, CPU, trainer, None), objective)
        for trainer in (dp, plain)
    ]
    without = train_locally(global_state, client, RoundContext(0, args, CPU, dp, None))

    for k in global_state:
        torch.testing.assert_close(with_penalty[0].state[k], with_penalty[1].state[k], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(with_penalty[0].state["0.weight"], without.state["0.weight"], atol=1e-4)
    assert dp.penalty is None


def test_check_model_refuses_batchnorm_naming_the_layer(make_args):
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

    with pytest.raises(PrivacyError, match=r"layer '1' \(BatchNorm1d\)"):
        DPSGDTrainer.check_model(model)
    with pytest.raises(PrivacyError, match="BatchNorm1d"):
        dp_trainer(model, make_args())
    DPSGDTrainer.check_model(nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.Flatten()))


@pytest.mark.parametrize("clip", [0.0, -1.0, float("inf"), float("nan"), True])
def test_a_bad_clipping_norm_is_refused(make_args, clip):
    with pytest.raises(PrivacyError, match="clipping_norm"):
        dp_trainer(mlp(), make_args(), clip=clip)


@pytest.mark.parametrize("sigma", [-0.1, float("nan"), float("inf")])
def test_a_bad_noise_multiplier_is_refused(make_args, sigma):
    args = make_args()
    with pytest.raises(PrivacyError, match="noise multiplier"):
        dp_trainer(mlp(), args, sigma=sigma).train(blobs(10), CPU, args)


def test_a_client_without_samples_takes_no_step(make_args):
    args = make_args()
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    none = torch.zeros(0, dtype=torch.long)
    empty = ClientData(torch.zeros(0, 4), none, none, 10)

    metrics = dp_trainer(model, args, sigma=1.0).train(empty, CPU, args)

    assert metrics["num_steps"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_train_locally_with_dpsgd_lowers_the_loss(make_args):
    data = blobs(200)
    args = make_args(epochs=3, batch_size=20, learning_rate=0.5)
    trainer = dp_trainer(mlp(), args, clip=1.0, sigma=0.3)
    ctx = RoundContext(0, args, CPU, trainer, None)
    global_state = trainer.get_model_params()
    before = trainer.test(data, CPU, args)["loss"]

    update = train_locally(global_state, Client(3, data), ctx)

    trainer.set_model_params(update.state)
    assert trainer.test(data, CPU, args)["loss"] < 0.5 * before
    assert update.weight == 200
    assert local_steps(update, args) == update.metrics["num_steps"] == 3 * 10
    assert update.metrics["dp_noise_multiplier"] == 0.3
    assert update.metrics["dp_sample_rate"] == pytest.approx(0.1)
