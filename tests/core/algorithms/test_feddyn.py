from types import SimpleNamespace

import pytest
import torch

from fedml.core.algorithms import FedDyn, SummedUpdate, algorithm_names, create_algorithm
from fedml.errors import AggregationError, ConfigError

from .conftest import update


def with_delta(client_idx, weight, w, delta):
    result = update(client_idx, weight, w=w)
    result.extras["delta_h/w"] = torch.tensor(delta)
    return result


def first_round(make_args, make_ctx):
    """alpha 0.5, N 10; models [1, 2] and [3, 0] from zero, so delta_h_i = -alpha * w_i."""
    algorithm = FedDyn(make_args(feddyn_alpha=0.5, client_num_in_total=10))
    updates = [with_delta(0, 1, [1.0, 2.0], [-0.5, -1.0]), with_delta(1, 1, [3.0, 0.0], [-1.5, 0.0])]
    new_state = algorithm.server_update({"w": torch.zeros(2)}, updates, make_ctx(client_num_in_total=10))
    return algorithm, new_state


def test_feddyn_is_registered(make_args):
    assert "FedDyn" in algorithm_names()
    assert isinstance(create_algorithm(make_args(federated_optimizer="FedDyn")), FedDyn)


@pytest.mark.parametrize("alpha", [0.0, -0.1])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ConfigError, match=r"train_args\.feddyn_alpha: Input should be greater than 0"):
        FedDyn(SimpleNamespace(feddyn_alpha=alpha))


def test_before_any_round_the_payload_is_empty_and_local_objective_is_none(make_args):
    algorithm = FedDyn(make_args())

    assert algorithm.client_payload(0) == {}
    assert algorithm.local_objective() is None


def test_server_model_is_the_mean_minus_h_over_alpha(make_args, make_ctx):
    algorithm, new_state = first_round(make_args, make_ctx)

    # mean [2, 1]; h = sum(delta_h_i) / N = [-0.2, -0.1]; mean - h / alpha = [2.4, 1.2]
    assert torch.allclose(algorithm.server_state["w"], torch.tensor([-0.2, -0.1]))
    assert torch.allclose(new_state["w"], torch.tensor([2.4, 1.2]))


def test_participants_keep_their_gradient_state_and_receive_it(make_args, make_ctx):
    algorithm, _ = first_round(make_args, make_ctx)

    payload = algorithm.client_payload(1)

    assert set(payload) == {"h_i/w"}
    assert torch.equal(payload["h_i/w"], torch.tensor([-1.5, 0.0]))
    assert torch.equal(algorithm.client_payload(0)["h_i/w"], torch.tensor([-0.5, -1.0]))
    assert algorithm.client_payload(7) == {}


def test_keys_without_gradient_state_are_the_plain_mean(make_args, make_ctx):
    algorithm = FedDyn(make_args(feddyn_alpha=0.5))
    updates = [with_delta(0, 1, [1.0], [-0.5]), with_delta(1, 3, [1.0], [-0.5])]
    updates[0].state["n"], updates[1].state["n"] = torch.tensor(1), torch.tensor(5)

    new_state = algorithm.server_update({"w": torch.zeros(1), "n": torch.tensor(0)}, updates, make_ctx())

    assert int(new_state["n"]) == 4
    assert "n" not in algorithm.server_state


def test_a_summed_update_is_refused(make_args, make_ctx):
    summed = SummedUpdate(clients=2, weight=4.0, state={"w": torch.zeros(1)})

    with pytest.raises(AggregationError, match="FedDyn needs every client's update"):
        FedDyn(make_args()).server_update({"w": torch.zeros(1)}, summed, make_ctx())

    assert FedDyn.accepts_presummed_updates is False


def test_state_dict_round_trip_gives_the_same_next_round(make_args, make_ctx):
    original, state = first_round(make_args, make_ctx)
    restored = FedDyn(make_args(feddyn_alpha=0.5, client_num_in_total=10))
    fresh = FedDyn(make_args(feddyn_alpha=0.5, client_num_in_total=10))
    restored.load_state_dict(original.state_dict())
    ctx = make_ctx(1, client_num_in_total=10)

    def second():
        return [with_delta(0, 1, [2.0, 2.0], [-0.25, 0.25])]

    expected = original.server_update(state, second(), ctx)
    resumed = restored.server_update(state, second(), ctx)
    forgetful = fresh.server_update(state, second(), ctx)

    assert set(original.state_dict()) == {"server_state", "client_states"}
    assert torch.equal(resumed["w"], expected["w"])
    assert not torch.allclose(forgetful["w"], expected["w"])
    assert torch.equal(restored.client_payload(0)["h_i/w"], original.client_payload(0)["h_i/w"])


def test_a_state_dict_is_a_snapshot_that_later_rounds_leave_alone(make_args, make_ctx):
    algorithm = FedDyn(make_args(client_num_in_total=2, client_num_per_round=2))
    global_state = {"w": torch.zeros(2)}
    algorithm.server_update(global_state, [with_delta(0, 1, [1.0, 1.0], [1.0, 1.0])], make_ctx())
    snapshot = algorithm.state_dict()
    before = snapshot["client_states"][0]["w"].clone()
    algorithm.server_update(global_state, [with_delta(0, 1, [1.0, 1.0], [5.0, 5.0])], make_ctx())
    assert torch.equal(snapshot["client_states"][0]["w"], before)
    assert not torch.equal(algorithm.client_states[0]["w"], before)
