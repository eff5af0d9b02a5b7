import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

import fedml
from fedml.errors import ConfigError
from fedml.model.cnn import CNN, CifarCNN

IMAGE_MNIST, IMAGE_CIFAR, CHARS = (1, 28, 28), (3, 32, 32), (80,)

# (name, one sample's shape, classes, published or reference parameter count)
CASES = [
    ("cnn", IMAGE_MNIST, 62, 1_690_046),  # FedAvg CNN (1,663,370 for 10 classes) with a 62-way output
    ("cnn", IMAGE_CIFAR, 10, 797_962),
    ("resnet20", IMAGE_CIFAR, 10, 269_722),  # He et al.: 0.27M (option A shortcuts)
    ("resnet18", IMAGE_CIFAR, 10, 11_173_962),  # the usual CIFAR ResNet-18
    ("mobilenet_v2", IMAGE_CIFAR, 10, 2_236_682),  # torchvision's, 10 classes
    ("mobilenet_v2", IMAGE_MNIST, 62, None),
    ("resnet20", IMAGE_MNIST, 62, None),
    ("rnn", CHARS, 80, 819_920),  # LEAF Shakespeare LSTM with PyTorch's two biases per layer
    ("transformer_tiny", CHARS, 80, None),
]
IDS = [f"{name}-{'x'.join(map(str, shape))}-{out}" for name, shape, out, _ in CASES]
GROUPNORM_MODELS = ["resnet18", "resnet20", "mobilenet_v2"]


def make(name, shape, classes, seed=0):
    args = SimpleNamespace(model=name, dataset="unused", random_seed=seed)
    return fedml.model.create(args, classes, input_shape=shape)


def inputs(shape, classes, n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if shape == CHARS:
        return torch.randint(0, classes, (n, *shape), generator=generator)
    return torch.randn(n, *shape, generator=generator)


def params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "shape", "classes", "expected"), CASES, ids=IDS)
def test_output_shape_and_parameter_count(name, shape, classes, expected):
    model = make(name, shape, classes)
    assert model(inputs(shape, classes)).shape == (2, classes)
    if expected is not None:
        assert params(model) == expected


def test_transformer_tiny_is_a_few_hundred_thousand_parameters_and_deterministic():
    model = make("transformer_tiny", CHARS, 80)
    assert 100_000 <= params(model) <= 300_000
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    x = inputs(CHARS, 80)
    assert torch.equal(model(x), model(x))


def test_transformer_is_causal():
    model = make("transformer_tiny", CHARS, 80)
    x = inputs(CHARS, 80)
    changed = x.clone()
    changed[:, 40] = (changed[:, 40] + 1) % 80
    embed = lambda t: model.token(t) + model.position(torch.arange(t.shape[1]))  # noqa: E731
    before, after = model.blocks(embed(x)), model.blocks(embed(changed))
    assert torch.allclose(before[:, :40], after[:, :40])
    assert not torch.allclose(before[:, 40:], after[:, 40:])


def test_sequence_models_accept_shorter_sequences():
    for name in ("rnn", "transformer_tiny"):
        assert make(name, CHARS, 80)(torch.zeros(3, 20, dtype=torch.int64)).shape == (3, 80)


@pytest.mark.parametrize("name", GROUPNORM_MODELS)
def test_groupnorm_models_have_no_buffers_and_no_batchnorm(name):
    model = make(name, IMAGE_CIFAR, 10)
    assert list(model.buffers()) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


# One case per architecture: training is the slow part on a CPU.
TRAIN = [case for i, case in enumerate(CASES) if case[0] not in [c[0] for c in CASES[:i]] or i == 1]


@pytest.mark.parametrize(
    ("name", "shape", "classes", "expected"), TRAIN, ids=[IDS[CASES.index(c)] for c in TRAIN]
)
def test_sgd_steps_reduce_the_loss_on_a_tiny_batch(name, shape, classes, expected):
    model = make(name, shape, classes)
    x, y = inputs(shape, classes), torch.tensor([0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["cnn", "resnet20", "resnet18", "mobilenet_v2", "rnn", "transformer_tiny"])
def test_initialisation_is_seeded_and_leaves_the_global_rng_alone(name):
    shape, classes = (CHARS, 80) if name in ("rnn", "transformer_tiny") else (IMAGE_CIFAR, 10)
    before = torch.get_rng_state().clone()
    a, b, c = (make(name, shape, classes, seed) for seed in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_cnn_picks_the_variant_by_input_shape_and_keeps_the_mnist_model():
    assert isinstance(make("cnn", IMAGE_CIFAR, 100), CifarCNN)
    mnist = make("cnn", IMAGE_MNIST, 10)
    assert type(mnist) is CNN
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = CNN(IMAGE_MNIST, 10)
    assert all(torch.equal(p, q) for p, q in zip(mnist.parameters(), reference.parameters(), strict=True))


def test_cifar_cnn_refuses_images_too_small_for_its_layers():
    with pytest.raises(ConfigError, match=r"at least 16x16.*\(3, 12, 12\)"):
        make("cnn", (3, 12, 12), 10)


def test_transformer_heads_must_divide_the_width():
    from fedml.model import TinyTransformer

    with pytest.raises(ConfigError, match=r"heads \(5\) must divide width \(64\)"):
        TinyTransformer(CHARS, 80, heads=5)
