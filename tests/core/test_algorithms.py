import pytest
import torch

from fedml.core.algorithms import FedAvg, FedProx, algorithm_names
from fedml.errors import ConfigError


def test_fedavg_and_fedprox_are_registered():
    assert {"FedAvg", "FedProx"} <= set(algorithm_names())


def test_fedavg_has_no_penalty():
    assert FedAvg().local_objective().penalty is None


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
