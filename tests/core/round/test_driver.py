import pytest
import torch

import fedml
from fedml.core.algorithms import SummedUpdate, Update, create_algorithm
from fedml.core.round import FederatedRound
from fedml.errors import AggregationError, NotSupportedError
from fedml.ml import ClientTrainer, ServerAggregator


class ScriptedBackend:
    """A backend whose clients 'train' to a fixed state; it records every task and how the run ended."""

    name = "scripted"

    def __init__(self, candidates, presummed=False, value=1.0, weight=5.0):
        self.candidates = candidates
        self.presummed = presummed
        self.value = value
        self.weight = weight
        self.tasks = []
        self.ended = None
        self.opened = False

    def open(self):
        self.opened = True

    def clients(self):
        return list(self.candidates)

    def selection_size(self, wanted):
        return wanted

    def train(self, task):
        self.tasks.append(task)
        states = {
            c: {k: torch.full_like(v, self.value) for k, v in task.global_state.items()} for c in task.clients
        }
        if self.presummed:
            return SummedUpdate(
                len(task.clients), self.weight * len(task.clients), states[task.clients[0]], {}
            )
        return [Update(c, self.weight, states[c], {"train_loss": 0.25}) for c in task.clients]

    def close(self, result, error):
        self.ended = result if error is None else error


def driver(args):
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return FederatedRound(
        args,
        torch.device("cpu"),
        dataset.test_global,
        create_algorithm(args),
        ClientTrainer(model, args),
        ServerAggregator(model, args),
    )


def test_the_driver_samples_from_the_backends_clients_and_ends_it_with_the_result(make_args):
    args = make_args(comm_round=3, client_num_per_round=2)
    backend = ScriptedBackend(candidates=[3, 5, 8, 9])
    result = driver(args).run(backend)
    assert backend.opened
    assert backend.ended is result
    assert [t.round_idx for t in backend.tasks] == [0, 1, 2]
    assert all(len(t.clients) == 2 and set(t.clients) <= {3, 5, 8, 9} for t in backend.tasks)
    again = ScriptedBackend(candidates=[3, 5, 8, 9])
    driver(make_args(comm_round=3, client_num_per_round=2)).run(again)
    assert [t.clients for t in again.tasks] == [t.clients for t in backend.tasks]
    assert all(torch.all(v == 1.0) for v in result.model_state.values() if v.dtype.is_floating_point)
    assert result.final_metrics["train_loss"] == 0.25


def test_a_summed_result_goes_straight_to_the_server_rule(make_args):
    result = driver(make_args(comm_round=1)).run(ScriptedBackend(range(10), presummed=True, value=2.0))
    assert all(torch.all(v == 2.0) for v in result.model_state.values() if v.dtype.is_floating_point)


def test_a_summed_result_is_refused_before_the_run_when_a_step_needs_each_update(make_args):
    args = make_args(enable_defense=True, defense_type="median")
    backend = ScriptedBackend(range(10), presummed=True)
    with pytest.raises(
        NotSupportedError, match=r"comm_args\.backend scripted sums client updates .* the defense step"
    ):
        driver(args).run(backend)
    assert backend.tasks == []
    assert not backend.opened


def test_a_round_with_no_usable_update_ends_the_backend_with_the_error(make_args):
    backend = ScriptedBackend(range(10), value=float("nan"))
    with pytest.raises(AggregationError, match="round 1: none of the 10 client updates is usable"):
        driver(make_args(comm_round=2)).run(backend)
    assert isinstance(backend.ended, AggregationError)
    summed = ScriptedBackend(range(10), presummed=True, weight=0.0)
    with pytest.raises(AggregationError, match="round 1: none of the client updates is usable"):
        driver(make_args(comm_round=2)).run(summed)
