import pytest
import torch

from fedml.core.algorithms import FedAvg, FedNova, SummedUpdate, algorithm_names, create_algorithm
from fedml.errors import AggregationError

from .conftest import update


def test_fednova_is_registered(make_args):
    assert "FedNova" in algorithm_names()
    assert isinstance(create_algorithm(make_args(federated_optimizer="FedNova")), FedNova)


def test_equal_local_steps_give_fedavg(make_args, make_ctx):
    global_state = {"w": torch.tensor([1.0, -1.0])}
    updates = [update(0, 1, {"num_steps": 5}, w=[0.0, 4.0]), update(1, 3, {"num_steps": 5}, w=[4.0, 0.0])]

    nova = FedNova(make_args()).server_update(global_state, updates, make_ctx())
    avg = FedAvg().server_update(global_state, updates, make_ctx())

    assert torch.allclose(nova["w"], avg["w"])


def test_changes_are_normalized_by_the_reported_steps(make_args, make_ctx):
    # per-step changes 1 (4 steps) and 2 (1 step), equal shares: tau_eff = 2.5, direction = 1.5
    updates = [update(0, 1, {"num_steps": 4}, w=[-4.0]), update(1, 1, {"num_steps": 1}, w=[-2.0])]

    new_state = FedNova(make_args()).server_update({"w": torch.zeros(1)}, updates, make_ctx())

    assert new_state["w"].item() == pytest.approx(-3.75)


def test_without_num_steps_the_steps_come_from_epochs_and_batches(make_args, make_ctx):
    # epochs 1, batch 10: 10 samples -> 1 step, 30 samples -> 3 steps; shares 1/4 and 3/4
    # tau_eff = 0.25 * 1 + 0.75 * 3 = 2.5; direction = 0.25 * 1 / 1 + 0.75 * 6 / 3 = 1.75
    updates = [update(0, 10, w=[-1.0]), update(1, 30, w=[-6.0])]

    new_state = FedNova(make_args(epochs=1, batch_size=10)).server_update(
        {"w": torch.zeros(1)}, updates, make_ctx(epochs=1, batch_size=10)
    )

    assert new_state["w"].item() == pytest.approx(-4.375)


def test_more_epochs_mean_more_steps(make_args, make_ctx):
    updates = [update(0, 10, w=[-1.0]), update(1, 30, w=[-6.0])]
    ctx = make_ctx(epochs=2, batch_size=10)

    new_state = FedNova(ctx.args).server_update({"w": torch.zeros(1)}, updates, ctx)

    # steps 2 and 6 scale tau_eff up and the direction down by the same factor: same state as 1 epoch
    assert new_state["w"].item() == pytest.approx(-4.375)


def test_integer_buffers_take_the_weighted_mean(make_args, make_ctx):
    updates = [update(0, 1, {"num_steps": 4}, w=[-4.0], n=1), update(1, 3, {"num_steps": 1}, w=[-2.0], n=5)]

    new_state = FedNova(make_args()).server_update(
        {"w": torch.zeros(1), "n": torch.tensor(0)}, updates, make_ctx()
    )

    assert new_state["n"].dtype == torch.int64
    assert int(new_state["n"]) == 4


def test_a_summed_update_is_refused(make_args, make_ctx):
    summed = SummedUpdate(clients=2, weight=4.0, state={"w": torch.zeros(1)})

    with pytest.raises(
        AggregationError, match="FedNova needs every client's update, but the backend summed them"
    ):
        FedNova(make_args()).server_update({"w": torch.zeros(1)}, summed, make_ctx())

    assert FedNova.accepts_presummed_updates is False


def test_client_payload_is_empty(make_args):
    assert FedNova(make_args()).client_payload(2) == {}
