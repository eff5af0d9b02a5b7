import torch

import fedml
from fedml.ml import ClientTrainer, ServerAggregator


def setup(make_args, **overrides):
    args = make_args(**overrides)
    dataset, output_dim = fedml.data.load(args)
    return args, dataset, fedml.model.create(args, output_dim)


def test_local_training_lowers_the_client_loss(make_args):
    args, dataset, model = setup(make_args, epochs=3)
    trainer = ClientTrainer(model, args)
    data = dataset.local_train(0)
    before = trainer.test(data, torch.device("cpu"), args)["loss"]
    metrics = trainer.train(data, torch.device("cpu"), args)
    after = trainer.test(data, torch.device("cpu"), args)["loss"]
    assert after < before
    assert metrics["num_samples"] == len(data)


def test_adam_and_sgd_take_different_steps(make_args):
    states = []
    for optimizer in ("sgd", "adam"):
        args, dataset, model = setup(make_args, client_optimizer=optimizer, learning_rate=0.001)
        trainer = ClientTrainer(model, args)
        trainer.train(dataset.local_train(0), torch.device("cpu"), args)
        states.append(trainer.get_model_params())
    assert not torch.equal(states[0]["linear.weight"], states[1]["linear.weight"])


def test_get_model_params_is_a_copy(make_args):
    args, dataset, model = setup(make_args)
    trainer = ClientTrainer(model, args)
    snapshot = trainer.get_model_params()
    trainer.train(dataset.local_train(0), torch.device("cpu"), args)
    assert not torch.equal(snapshot["linear.weight"], model.linear.weight)


def test_aggregator_tests_on_the_given_data(make_args):
    args, dataset, model = setup(make_args)
    metrics = ServerAggregator(model, args).test(dataset.test_global, torch.device("cpu"), args)
    assert metrics["num_samples"] == dataset.test_data_num
    assert 0.0 <= metrics["accuracy"] <= 0.3
