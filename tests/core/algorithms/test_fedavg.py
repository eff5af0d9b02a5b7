import torch

from fedml.core.algorithms import FedAvg, SummedUpdate, algorithm_names, create_algorithm
from fedml.ml import ServerAggregator

from .conftest import update

GLOBAL = {"w": torch.tensor([9.0, 9.0]), "n": torch.tensor(0)}


def test_fedavg_and_fedprox_are_registered():
    assert {"FedAvg", "FedProx"} <= set(algorithm_names())


def test_create_algorithm_builds_fedavg_by_name(make_args):
    algorithm = create_algorithm(make_args(federated_optimizer="FedAvg"))

    assert isinstance(algorithm, FedAvg)
    assert algorithm.name == "FedAvg"


def test_fedavg_has_no_penalty():
    assert FedAvg().local_objective().penalty is None


def test_server_update_is_the_sample_weighted_mean(make_ctx):
    updates = [update(0, 1, w=[0.0, 4.0], n=1), update(1, 3, w=[4.0, 0.0], n=5)]

    new_state = FedAvg().server_update(GLOBAL, updates, make_ctx())

    assert torch.allclose(new_state["w"], torch.tensor([3.0, 1.0]))
    assert new_state["n"].dtype == torch.int64
    assert int(new_state["n"]) == 4


def test_scaling_every_weight_gives_the_same_state(make_ctx):
    small = [update(0, 1, w=[0.0, 4.0], n=1), update(1, 3, w=[4.0, 0.0], n=5)]
    large = [update(0, 100, w=[0.0, 4.0], n=1), update(1, 300, w=[4.0, 0.0], n=5)]

    a = FedAvg().server_update(GLOBAL, small, make_ctx())
    b = FedAvg().server_update(GLOBAL, large, make_ctx())

    assert torch.allclose(a["w"], b["w"])
    assert torch.equal(a["n"], b["n"])


def test_server_update_ignores_the_global_state_values(make_ctx):
    updates = [update(0, 1, w=[2.0, 2.0], n=3)]

    new_state = FedAvg().server_update(
        {"w": torch.tensor([-50.0, 50.0]), "n": torch.tensor(9)}, updates, make_ctx()
    )

    assert torch.equal(new_state["w"], torch.tensor([2.0, 2.0]))
    assert int(new_state["n"]) == 3


def test_server_update_accepts_a_summed_update(make_ctx):
    summed = SummedUpdate(clients=2, weight=4.0, state={"w": torch.tensor([3.0, 1.0]), "n": torch.tensor(4)})

    new_state = FedAvg().server_update(GLOBAL, summed, make_ctx())

    assert FedAvg.accepts_presummed_updates is True
    assert torch.equal(new_state["w"], torch.tensor([3.0, 1.0]))
    assert int(new_state["n"]) == 4


def test_server_update_goes_through_the_aggregator_hooks(make_ctx):
    calls = []

    class Recording(ServerAggregator):
        def on_before_aggregation(self, raw_client_model_or_grad_list):
            calls.append(("before", [w for w, _ in raw_client_model_or_grad_list]))
            return raw_client_model_or_grad_list

        def on_after_aggregation(self, aggregated_model_or_grad):
            calls.append(("after", aggregated_model_or_grad["w"].tolist()))
            return {k: v * 2 for k, v in aggregated_model_or_grad.items()}

    updates = [update(0, 1, w=[0.0, 4.0], n=1), update(1, 3, w=[4.0, 0.0], n=5)]

    new_state = FedAvg().server_update(GLOBAL, updates, make_ctx(aggregator=Recording))

    assert calls == [("before", [1.0, 3.0]), ("after", [3.0, 1.0])]
    assert torch.equal(new_state["w"], torch.tensor([6.0, 2.0]))


def test_server_update_leaves_the_updates_unchanged(make_ctx):
    updates = [update(0, 1, w=[0.0, 4.0], n=1), update(1, 3, w=[4.0, 0.0], n=5)]

    FedAvg().server_update(GLOBAL, updates, make_ctx())

    assert torch.equal(updates[0].state["w"], torch.tensor([0.0, 4.0]))
    assert torch.equal(updates[1].state["w"], torch.tensor([4.0, 0.0]))
    assert [u.weight for u in updates] == [1.0, 3.0]


def test_client_payload_is_empty_for_every_client():
    algorithm = FedAvg()

    assert algorithm.client_payload(0) == {}
    assert algorithm.client_payload(123) == {}


def test_fedavg_is_stateless():
    assert not hasattr(FedAvg(), "state_dict")
