import re
from types import SimpleNamespace

import pytest
import torch

import fedml
from fedml.errors import ConfigError


def make(name, seed=0):
    return fedml.model.create(SimpleNamespace(model=name, dataset="mnist", random_seed=seed), output_dim=10)


@pytest.mark.parametrize("name", ["lr", "mlp", "cnn"])
def test_models_map_mnist_batches_to_logits(name):
    out = make(name)(torch.zeros(4, 1, 28, 28))
    assert out.shape == (4, 10)


def test_cnn_is_the_fedavg_paper_architecture():
    # McMahan et al. (2017) report 1,663,370 parameters for this CNN on MNIST.
    assert sum(p.numel() for p in make("cnn").parameters()) == 1_663_370


def test_lr_is_linear_logits_without_sigmoid():
    model = make("lr")
    x = torch.randn(2, 1, 28, 28)
    expected = x.flatten(1) @ model.linear.weight.T + model.linear.bias
    assert torch.allclose(model(x), expected)


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone():
    before = torch.get_rng_state().clone()
    a, b, c = make("mlp", seed=3), make("mlp", seed=3), make("mlp", seed=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_unknown_model_lists_the_valid_names():
    valid = "cnn, lr, mlp, mobilenet_v2, resnet18, resnet20, rnn, transformer_tiny"
    hint = "did you mean resnet20\\?"
    with pytest.raises(ConfigError, match=f"unknown model 'resnet50'; {hint}; valid: {valid}$"):
        make("resnet50")
    with pytest.raises(ConfigError, match=f"unknown model 'vgg'; valid: {valid}$"):
        make("vgg")


def test_registered_models_are_creatable(monkeypatch):
    monkeypatch.setattr(fedml.model.MODELS, "_entries", dict(fedml.model.MODELS._entries))
    fedml.model.register_model("tiny", lambda shape, out: torch.nn.Linear(28 * 28, out))
    assert "tiny" in fedml.model.model_names()
    assert isinstance(make("tiny"), torch.nn.Linear)


def test_the_models_doc_lists_every_model_with_its_parameter_count():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| \(([\d, ]+)\) (float|int64)[^|]*\| (\d+) \| ([\d,]+) \|", text, re.M)
    assert {name for name, *_ in rows} == set(fedml.model.model_names())
    for name, shape, _, output_dim, documented in rows:
        args = SimpleNamespace(model=name, dataset="unused", random_seed=0)
        input_shape = tuple(int(d) for d in shape.split(",") if d.strip())
        model = fedml.model.create(args, int(output_dim), input_shape=input_shape)
        assert sum(p.numel() for p in model.parameters()) == int(documented.replace(",", "")), name
