import logging

import pytest
import torch

import fedml
from fedml.core.algorithms import FedAvg
from fedml.data import FederatedDataset
from fedml.simulation.engine import choose_engine
from fedml.simulation.vectorized import probe, unsupported_reason

# Small images keep the CPU time down; the CIFAR CNN needs at least 16x16.
SMALL_IMAGE, CNN_IMAGE, CHARS = (3, 8, 8), (3, 16, 16), (80,)
VECTORIZABLE = ["cnn", "resnet20", "resnet18", "mobilenet_v2", "transformer_tiny"]


def shape_of(name):
    if name == "cnn":
        return CNN_IMAGE
    return CHARS if name in ("rnn", "transformer_tiny") else SMALL_IMAGE


def dataset(shape, classes, clients=2, per_client=2):
    """Random inputs of the model's kind (character ids or images), labels 0..classes-1."""
    n = clients * per_client
    generator = torch.Generator().manual_seed(0)
    if shape == CHARS:
        x = torch.randint(0, classes, (n, *shape), generator=generator)
    else:
        x = torch.randn(n, *shape, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    split = [list(range(c, n, clients)) for c in range(clients)]
    return FederatedDataset.from_tensors(x, y, x, y, split, output_dim=classes)


def model_for(args, name, classes=10):
    return fedml.model.create(args, classes, input_shape=shape_of(name))


def run(args, name, data):
    model = model_for(args, name, data.output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), data, model).run()


def small(make_args, name, **overrides):
    settings = {"model": name, "client_num_in_total": 2, "client_num_per_round": 2, "comm_round": 1}
    return make_args(batch_size=2, learning_rate=0.05, save_model=False, **{**settings, **overrides})


@pytest.mark.parametrize("name", VECTORIZABLE)
def test_the_vectorized_engine_accepts_the_model(make_args, name):
    args = small(make_args, name)
    model = model_for(args, name)
    objective = FedAvg().local_objective()
    assert unsupported_reason(model, args, objective) is None
    sample = dataset(shape_of(name), 10).test_global.x[0]
    assert probe(model, sample, objective) is None


@pytest.mark.parametrize("name", VECTORIZABLE)
def test_vectorized_training_gives_the_sequential_model(make_args, name):
    data = dataset(shape_of(name), 10)
    sequential = run(small(make_args, name, engine="sequential"), name, data)
    vectorized = run(small(make_args, name, engine="vectorized"), name, data)
    assert (sequential.engine, vectorized.engine) == ("sequential", "vectorized")
    start = model_for(small(make_args, name), name).state_dict()
    assert any(not torch.equal(start[k], vectorized.model_state[k]) for k in start)  # it trained
    diff = max(float((sequential.model_state[k] - vectorized.model_state[k]).abs().max()) for k in start)
    assert diff <= 1e-5


@pytest.mark.parametrize("engine", ["auto", "vectorized"])
def test_the_lstm_falls_back_to_sequential_and_says_why(make_args, caplog, engine):
    caplog.set_level(logging.INFO, logger="fedml")
    data = dataset(CHARS, 80)
    result = run(small(make_args, "rnn", engine=engine, client_num_per_round=2), "rnn", data)
    assert result.engine == "sequential"
    lines = [r for r in caplog.records if r.getMessage().startswith("engine:")]
    assert len(lines) == 1
    assert "vmap cannot run the model" in lines[0].getMessage()
    assert "lstm" in lines[0].getMessage()
    assert lines[0].levelno == (logging.WARNING if engine == "vectorized" else logging.INFO)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("transformer_tiny", "vectorized"),
        ("resnet20", "vectorized"),
        ("resnet18", "vectorized"),
        ("mobilenet_v2", "vectorized"),
        ("rnn", "sequential"),  # vmap cannot run an LSTM: nothing is measured
    ],
)
def test_auto_picks_the_engine_on_a_cpu_with_four_clients(make_args, monkeypatch, name, expected):
    from fedml.simulation import engine as engine_module
    from fedml.simulation.engine import StepCosts

    # A batched step measured cheaper than the sequential ones: every model that vectorizes takes it.
    monkeypatch.setattr(engine_module, "MEASURED", {})
    monkeypatch.setattr(
        engine_module, "measure_step_costs", lambda model, objective, x, y, args: StepCosts(4, 0.001, 0.002)
    )
    args = small(make_args, name, engine="auto", client_num_in_total=4, client_num_per_round=4)
    classes = 80 if name == "rnn" else 10
    data = dataset(shape_of(name), classes, clients=4, per_client=1)
    model = model_for(args, name, classes)
    engine, _ = choose_engine(args, torch.device("cpu"), model, FedAvg(), data, custom_trainer=False)
    assert engine == expected
