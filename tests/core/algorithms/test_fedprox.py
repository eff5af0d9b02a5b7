import pytest
import torch

from fedml.core.algorithms import FedAvg, FedProx, SummedUpdate, algorithm_names, create_algorithm
from fedml.errors import ConfigError

from .conftest import update


def test_fedprox_is_registered_and_built_with_its_mu(make_args):
    algorithm = create_algorithm(make_args(federated_optimizer="FedProx", fedprox_mu=0.3))

    assert "FedProx" in algorithm_names()
    assert isinstance(algorithm, FedProx)
    assert algorithm.mu == 0.3


def test_proximal_term_is_half_mu_squared_distance():
    class Args:
        fedprox_mu = 0.5

    prox = FedProx(Args())
    params = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0])}
    anchor = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.0])}
    assert float(prox.local_objective().penalty(params, anchor)) == pytest.approx(0.25 * (1 + 4 + 4))


def test_negative_mu_is_rejected():
    class Args:
        fedprox_mu = -1.0

    with pytest.raises(ConfigError, match="fedprox_mu"):
        FedProx(Args())


def test_mu_defaults_to_one_hundredth_without_arguments():
    assert FedProx().mu == 0.01


def test_proximal_term_is_zero_at_the_global_model_and_with_mu_zero(make_args):
    params = {"w": torch.tensor([1.0, -2.0])}
    anchor = {"w": torch.tensor([0.0, 0.0])}

    assert float(FedProx(make_args()).proximal_term(anchor, anchor)) == 0.0
    assert float(FedProx(make_args(fedprox_mu=0.0)).proximal_term(params, anchor)) == 0.0


def test_proximal_gradient_is_mu_times_the_distance(make_args):
    prox = FedProx(make_args(fedprox_mu=0.5))
    params = {"w": torch.tensor([1.0, -2.0], requires_grad=True)}
    anchor = {"w": torch.tensor([0.0, 1.0])}

    prox.proximal_term(params, anchor).backward()

    assert torch.allclose(params["w"].grad, 0.5 * torch.tensor([1.0, -3.0]))


def test_server_update_is_fedavgs(make_ctx, make_args):
    global_state = {"w": torch.zeros(2)}
    updates = [update(0, 2, w=[1.0, 3.0]), update(1, 6, w=[5.0, -1.0])]

    prox = FedProx(make_args(fedprox_mu=0.5)).server_update(global_state, updates, make_ctx())
    avg = FedAvg().server_update(global_state, updates, make_ctx())

    assert torch.equal(prox["w"], avg["w"])
    assert torch.allclose(prox["w"], torch.tensor([4.0, 0.0]))


def test_server_update_accepts_a_summed_update(make_ctx, make_args):
    summed = SummedUpdate(clients=3, weight=9.0, state={"w": torch.tensor([1.5, 2.5])})

    new_state = FedProx(make_args()).server_update({"w": torch.zeros(2)}, summed, make_ctx())

    assert FedProx.accepts_presummed_updates is True
    assert torch.equal(new_state["w"], torch.tensor([1.5, 2.5]))


def test_client_payload_is_empty(make_args):
    assert FedProx(make_args()).client_payload(4) == {}
