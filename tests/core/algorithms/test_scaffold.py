import pytest
import torch

from fedml.core.algorithms import FedAvg, Scaffold, SummedUpdate, Update, algorithm_names, create_algorithm
from fedml.errors import AggregationError

from .conftest import update


def with_delta(client_idx, weight, w, delta):
    result = update(client_idx, weight, w=w)
    result.extras["delta_c/w"] = torch.tensor(delta)
    return result


def test_scaffold_is_registered(make_args):
    assert "SCAFFOLD" in algorithm_names()
    assert isinstance(create_algorithm(make_args(federated_optimizer="SCAFFOLD")), Scaffold)


def test_before_any_round_the_payload_is_empty_and_local_objective_is_none(make_args):
    algorithm = Scaffold(make_args())

    assert algorithm.client_payload(0) == {}
    assert algorithm.local_objective() is None


def test_server_update_averages_the_models_like_fedavg(make_args, make_ctx):
    updates = [with_delta(0, 1, [0.0, 4.0], [1.0, 2.0]), with_delta(1, 3, [4.0, 0.0], [3.0, -2.0])]
    global_state = {"w": torch.zeros(2)}

    new_state = Scaffold(make_args()).server_update(global_state, updates, make_ctx())

    assert torch.allclose(new_state["w"], FedAvg().server_update(global_state, updates, make_ctx())["w"])


def test_control_variates_move_by_the_changes_over_all_clients(make_args, make_ctx):
    algorithm = Scaffold(make_args(client_num_in_total=10))
    updates = [with_delta(0, 1, [0.0, 4.0], [1.0, 2.0]), with_delta(1, 3, [4.0, 0.0], [3.0, -2.0])]

    algorithm.server_update({"w": torch.zeros(2)}, updates, make_ctx(client_num_in_total=10))

    # c += |S|/N * mean(delta) = (delta_0 + delta_1) / N, whatever the sample weights
    assert torch.allclose(algorithm.server_control["w"], torch.tensor([0.4, 0.0]))
    assert torch.equal(algorithm.client_controls[0]["w"], torch.tensor([1.0, 2.0]))
    assert torch.equal(algorithm.client_controls[1]["w"], torch.tensor([3.0, -2.0]))


def test_payload_sends_c_and_the_clients_own_c_i(make_args, make_ctx):
    algorithm = Scaffold(make_args(client_num_in_total=10))
    updates = [with_delta(0, 1, [0.0, 4.0], [1.0, 2.0]), with_delta(1, 3, [4.0, 0.0], [3.0, -2.0])]
    algorithm.server_update({"w": torch.zeros(2)}, updates, make_ctx(client_num_in_total=10))

    seen, unseen = algorithm.client_payload(0), algorithm.client_payload(5)

    assert set(seen) == {"c/w", "c_i/w"}
    assert torch.allclose(seen["c/w"], torch.tensor([0.4, 0.0]))
    assert torch.equal(seen["c_i/w"], torch.tensor([1.0, 2.0]))
    assert set(unseen) == {"c/w"}


def test_a_returning_client_accumulates_its_changes(make_args, make_ctx):
    algorithm = Scaffold(make_args(client_num_in_total=4, client_num_per_round=1))
    ctx = make_ctx(client_num_in_total=4, client_num_per_round=1)

    algorithm.server_update({"w": torch.zeros(2)}, [with_delta(2, 1, [1.0, 1.0], [1.0, 1.0])], ctx)
    algorithm.server_update({"w": torch.zeros(2)}, [with_delta(2, 1, [1.0, 1.0], [0.5, -3.0])], ctx)

    assert torch.allclose(algorithm.client_controls[2]["w"], torch.tensor([1.5, -2.0]))
    assert torch.allclose(algorithm.server_control["w"], torch.tensor([1.5, -2.0]) / 4)


def test_an_update_without_extras_changes_no_control_variate(make_args, make_ctx):
    algorithm = Scaffold(make_args())

    algorithm.server_update({"w": torch.zeros(1)}, [Update(0, 1.0, {"w": torch.ones(1)})], make_ctx())

    assert algorithm.server_control == {}
    assert algorithm.client_controls == {0: {}}


def test_a_summed_update_is_refused(make_args, make_ctx):
    summed = SummedUpdate(clients=2, weight=4.0, state={"w": torch.zeros(1)})

    with pytest.raises(AggregationError, match="SCAFFOLD needs every client's update"):
        Scaffold(make_args()).server_update({"w": torch.zeros(1)}, summed, make_ctx())

    assert Scaffold.accepts_presummed_updates is False


def test_state_dict_round_trip_restores_every_payload(make_args, make_ctx):
    original, restored = Scaffold(make_args()), Scaffold(make_args())
    updates = [with_delta(0, 1, [0.0, 4.0], [1.0, 2.0]), with_delta(3, 3, [4.0, 0.0], [3.0, -2.0])]
    original.server_update({"w": torch.zeros(2)}, updates, make_ctx())

    restored.load_state_dict(original.state_dict())

    assert set(original.state_dict()) == {"server_control", "client_controls"}
    for client in (0, 3, 7):
        expected, actual = original.client_payload(client), restored.client_payload(client)
        assert set(actual) == set(expected)
        assert all(torch.equal(actual[k], expected[k]) for k in expected)
    assert set(restored.client_controls) == {0, 3}


def test_a_state_dict_is_a_snapshot_that_later_rounds_leave_alone(make_args, make_ctx):
    algorithm = Scaffold(make_args(client_num_in_total=2, client_num_per_round=2))
    global_state = {"w": torch.zeros(2)}
    algorithm.server_update(global_state, [with_delta(0, 1, [0.0, 0.0], [1.0, 1.0])], make_ctx())
    snapshot = algorithm.state_dict()
    algorithm.server_update(global_state, [with_delta(0, 1, [0.0, 0.0], [5.0, 5.0])], make_ctx())
    assert torch.equal(snapshot["client_controls"][0]["w"], torch.tensor([1.0, 1.0]))
    restored = Scaffold(make_args(client_num_in_total=2, client_num_per_round=2))
    restored.load_state_dict(snapshot)
    restored.server_update(global_state, [with_delta(0, 1, [0.0, 0.0], [5.0, 5.0])], make_ctx())
    assert torch.equal(snapshot["client_controls"][0]["w"], torch.tensor([1.0, 1.0]))
    assert torch.equal(restored.client_controls[0]["w"], algorithm.client_controls[0]["w"])
