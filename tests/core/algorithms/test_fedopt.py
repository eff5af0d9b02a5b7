from types import SimpleNamespace

import pytest
import torch

from fedml.core.algorithms import FedAvg, FedOpt, SummedUpdate, algorithm_names, create_algorithm
from fedml.errors import ConfigError

from .conftest import update


def fedopt(make_args, **overrides):
    return FedOpt(make_args(federated_optimizer="FedOpt", **overrides))


def two_rounds(algorithm, make_ctx):
    """Round 1 from zero to a mean of [2, -2]; round 2 with clients that did not move."""
    first = algorithm.server_update(
        {"w": torch.zeros(2)}, [update(0, 1, w=[4.0, -4.0]), update(1, 1, w=[0.0, 0.0])], make_ctx(0)
    )
    second = algorithm.server_update(first, [update(0, 1, w=first["w"].clone())], make_ctx(1))
    return first, second


def test_fedopt_is_registered(make_args):
    assert "FedOpt" in algorithm_names()
    assert isinstance(create_algorithm(make_args(federated_optimizer="FedOpt")), FedOpt)


def test_unknown_server_optimizer_lists_the_valid_ones():
    args = SimpleNamespace(
        server_optimizer="rmsprop", server_lr=1.0, server_momentum=0.0, server_epsilon=1e-3
    )

    with pytest.raises(
        ConfigError, match=r"train_args\.server_optimizer: Input should be 'sgd', 'adam', 'yogi' or 'adagrad'"
    ):
        FedOpt(args)


def test_sgd_with_lr_one_and_no_momentum_is_fedavg(make_args, make_ctx):
    algorithm = fedopt(make_args, server_optimizer="sgd", server_lr=1.0, server_momentum=0.0)
    state = {"w": torch.tensor([1.0, -1.0]), "n": torch.tensor(2)}
    rounds = [
        [update(0, 1, w=[0.0, 4.0], n=1), update(1, 3, w=[4.0, 0.0], n=5)],
        [update(2, 2, w=[2.0, 2.0], n=3), update(0, 2, w=[-2.0, 6.0], n=3)],
    ]

    for round_idx, updates in enumerate(rounds):
        expected = FedAvg().server_update(state, updates, make_ctx(round_idx))
        state = algorithm.server_update(state, updates, make_ctx(round_idx))
        assert torch.allclose(state["w"], expected["w"])
        assert torch.equal(state["n"], expected["n"])


def test_sgd_server_lr_scales_the_step(make_args, make_ctx):
    algorithm = fedopt(make_args, server_lr=0.5)

    first, _ = two_rounds(algorithm, make_ctx)

    assert torch.allclose(first["w"], torch.tensor([1.0, -1.0]))


def test_sgd_momentum_keeps_moving_when_the_clients_stop(make_args, make_ctx):
    algorithm = fedopt(make_args, server_lr=0.5, server_momentum=0.9)

    first, second = two_rounds(algorithm, make_ctx)

    # round 1: m = [2, -2], x = 0.5 m; round 2: change 0, m = 0.9 m, x += 0.5 m
    assert torch.allclose(first["w"], torch.tensor([1.0, -1.0]))
    assert torch.allclose(second["w"], torch.tensor([1.9, -1.9]))


@pytest.mark.parametrize("optimizer", ["adam", "yogi"])
def test_first_adaptive_step_is_about_lr_times_the_sign_of_the_change(make_args, make_ctx, optimizer):
    # with tau small, m = (1 - b1) d and sqrt(v) ~ sqrt(1 - b2) |d|, so the step is ~ lr * 0.1 / 0.1 * sign(d)
    algorithm = fedopt(make_args, server_optimizer=optimizer, server_lr=0.1, server_momentum=0.9)
    updates = [update(0, 1, w=[20.0, -0.5])]

    new_state = algorithm.server_update({"w": torch.zeros(2)}, updates, make_ctx())

    assert new_state["w"][0] == pytest.approx(0.1, rel=0.03)
    assert new_state["w"][1] == pytest.approx(-0.1, rel=0.03)


def test_first_adagrad_step_is_about_a_tenth_of_lr_times_the_sign(make_args, make_ctx):
    # v = tau^2 + d^2, m = (1 - b1) d: the step is ~ lr * 0.1 * sign(d) for |d| >> tau
    algorithm = fedopt(make_args, server_optimizer="adagrad", server_lr=1.0, server_momentum=0.9)

    new_state = algorithm.server_update({"w": torch.zeros(2)}, [update(0, 1, w=[20.0, -0.5])], make_ctx())

    assert new_state["w"][0] == pytest.approx(0.1, rel=0.03)
    assert new_state["w"][1] == pytest.approx(-0.1, rel=0.03)


def test_integer_buffers_take_the_mean_not_a_server_step(make_args, make_ctx):
    algorithm = fedopt(make_args, server_lr=0.5)
    updates = [update(0, 1, w=[2.0], n=1), update(1, 3, w=[2.0], n=5)]

    new_state = algorithm.server_update({"w": torch.zeros(1), "n": torch.tensor(0)}, updates, make_ctx())

    assert int(new_state["n"]) == 4
    assert new_state["n"].dtype == torch.int64
    assert torch.allclose(new_state["w"], torch.tensor([1.0]))
    assert "n" not in algorithm.momentum


def test_server_update_accepts_a_summed_update(make_args, make_ctx):
    global_state = {"w": torch.zeros(2)}
    updates = [update(0, 1, w=[4.0, 0.0]), update(1, 3, w=[0.0, 4.0])]
    summed = SummedUpdate(clients=2, weight=4.0, state={"w": torch.tensor([1.0, 3.0])})

    from_list = fedopt(make_args, server_optimizer="adam").server_update(global_state, updates, make_ctx())
    from_sum = fedopt(make_args, server_optimizer="adam").server_update(global_state, summed, make_ctx())

    assert FedOpt.accepts_presummed_updates is True
    assert torch.allclose(from_list["w"], from_sum["w"])


def test_state_dict_holds_the_moments(make_args, make_ctx):
    algorithm = fedopt(make_args, server_optimizer="adam", server_momentum=0.9)

    assert algorithm.state_dict() == {"momentum": {}, "variance": {}, "step": 0}
    algorithm.server_update({"w": torch.zeros(2)}, [update(0, 1, w=[2.0, -2.0])], make_ctx())
    state = algorithm.state_dict()

    assert set(state["momentum"]) == {"w"}
    assert set(state["variance"]) == {"w"}
    assert state["step"] == 1
    assert torch.allclose(state["momentum"]["w"], torch.tensor([0.2, -0.2]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "yogi", "adagrad"])
def test_state_dict_round_trip_resumes_the_same_trajectory(make_args, make_ctx, optimizer):
    overrides = {"server_optimizer": optimizer, "server_lr": 0.5, "server_momentum": 0.9}
    original, restored, fresh = (fedopt(make_args, **overrides) for _ in range(3))
    state = {"w": torch.zeros(2)}
    state = original.server_update(state, [update(0, 1, w=[3.0, -1.0])], make_ctx(0))
    restored.load_state_dict(original.state_dict())
    second = [update(1, 1, w=[0.5, 0.5])]

    expected = original.server_update(state, second, make_ctx(1))
    resumed = restored.server_update(state, second, make_ctx(1))
    forgetful = fresh.server_update(state, second, make_ctx(1))

    assert torch.equal(resumed["w"], expected["w"])
    assert not torch.allclose(forgetful["w"], expected["w"])


def test_client_payload_is_empty(make_args):
    assert fedopt(make_args).client_payload(0) == {}


def one_step(make_args, make_ctx, **settings):
    """One server step from w = 0 towards a client mean of 2 (so the pseudo-gradient is 2)."""
    algorithm = fedopt(make_args, **settings)
    state = algorithm.server_update({"w": torch.zeros(1)}, [update(0, 1, w=[2.0])], make_ctx())
    return algorithm, state["w"].item()


# Known answers by hand, with beta1 = 0.5, beta2 = 0.5, tau = 1, lr = 1 and a pseudo-gradient d = 2:
# m = 0.5 * 0 + 0.5 * 2 = 1.
HAND = {"server_momentum": 0.5, "server_beta2": 0.5, "server_epsilon": 1.0, "server_lr": 1.0}


def test_fedadam_follows_reddi_algorithm_2_by_hand(make_args, make_ctx):
    # v = 0.5 * tau^2 + 0.5 * d^2 = 2.5; step = m / (sqrt(v) + tau) = 1 / (sqrt(2.5) + 1).
    _, w = one_step(make_args, make_ctx, server_optimizer="adam", **HAND)
    assert w == pytest.approx(1 / (2.5**0.5 + 1), rel=1e-6)


def test_fedyogi_by_hand(make_args, make_ctx):
    # v = tau^2 - (1 - 0.5) * d^2 * sign(tau^2 - d^2) = 1 + 2 = 3; step = 1 / (sqrt(3) + 1).
    _, w = one_step(make_args, make_ctx, server_optimizer="yogi", **HAND)
    assert w == pytest.approx(1 / (3**0.5 + 1), rel=1e-6)


def test_fedadagrad_keeps_the_beta1_momentum_by_hand(make_args, make_ctx):
    # v = tau^2 + d^2 = 5; step = m / (sqrt(v) + tau) = 1 / (sqrt(5) + 1): m carries beta1.
    _, w = one_step(make_args, make_ctx, server_optimizer="adagrad", **HAND)
    assert w == pytest.approx(1 / (5**0.5 + 1), rel=1e-6)


def test_fedavgm_by_hand(make_args, make_ctx):
    # sgd: m = d = 2 in the first step, then m = 0.5 * 2 + d.
    algorithm, w = one_step(make_args, make_ctx, server_optimizer="sgd", server_momentum=0.5, server_lr=1.0)
    assert w == pytest.approx(2.0)
    second = algorithm.server_update({"w": torch.tensor([2.0])}, [update(0, 1, w=[3.0])], make_ctx(1))
    assert second["w"].item() == pytest.approx(2.0 + 0.5 * 2 + 1)


def test_server_beta2_is_read_from_train_args(make_args, make_ctx):
    _, default = one_step(make_args, make_ctx, server_optimizer="adam", server_epsilon=1.0, server_lr=1.0)
    # beta1 0 (the default): m = d = 2; v = 0.99 + 0.01 * 4 = 1.03.
    assert default == pytest.approx(2 / (1.03**0.5 + 1), rel=1e-6)
    _, other = one_step(make_args, make_ctx, server_optimizer="adam", server_epsilon=1.0, server_beta2=0.9)
    assert other == pytest.approx(2 / (1.3**0.5 + 1), rel=1e-6)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match=r"train_args\.server_beta2"):
            make_args(federated_optimizer="FedOpt", server_beta2=bad)


def test_bias_correction_starts_v_at_zero_and_divides_both_moments(make_args, make_ctx):
    # v = 0.5 * 0 + 0.5 * 4 = 2; m_hat = 1 / (1 - 0.5) = 2; v_hat = 2 / (1 - 0.5) = 4;
    # step = m_hat / (sqrt(v_hat) + tau) = 2 / 3.
    algorithm, w = one_step(make_args, make_ctx, server_optimizer="adam", server_bias_correction=True, **HAND)
    assert w == pytest.approx(2 / 3, rel=1e-6)
    assert algorithm.state_dict()["step"] == 1
    restored = fedopt(make_args, server_optimizer="adam", server_bias_correction=True, **HAND)
    restored.load_state_dict(algorithm.state_dict())
    nxt = [update(0, 1, w=[1.0])]
    expected = algorithm.server_update({"w": torch.tensor([w])}, nxt, make_ctx(1))
    assert torch.equal(restored.server_update({"w": torch.tensor([w])}, nxt, make_ctx(1))["w"], expected["w"])


def test_bias_correction_is_refused_where_there_is_nothing_to_correct(make_args):
    with pytest.raises(ConfigError, match="server_bias_correction: applies to server_optimizer adam or yogi"):
        make_args(federated_optimizer="FedOpt", server_optimizer="adagrad", server_bias_correction=True)
