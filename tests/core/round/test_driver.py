import pytest
import torch

import fedml
from fedml.core.algorithms import SummedUpdate, Update, create_algorithm
from fedml.core.round import FederatedRound
from fedml.errors import AggregationError, NotSupportedError, RoundIncompleteError
from fedml.ml import ClientTrainer, ServerAggregator


class ScriptedBackend:
    """A backend whose clients 'train' to a fixed state; it records every task and how the run ended."""

    name = "scripted"

    def __init__(self, candidates, presummed=False, value=1.0, weight=5.0, retries=0, failures=0):
        self.candidates = candidates
        self.retries = retries
        self.failures = failures
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
        if self.failures:
            self.failures -= 1
            self.candidates = self.candidates[1:]
            raise RoundIncompleteError(f"round {task.round_idx + 1}: 0 of {len(task.clients)} replied")
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


def test_an_incomplete_round_is_retried_from_the_clients_online_then(make_args, caplog):
    caplog.set_level("WARNING", logger="fedml")
    backend = ScriptedBackend(candidates=[0, 1, 2], retries=2, failures=2)
    result = driver(make_args(comm_round=1, client_num_per_round=2)).run(backend)
    assert [t.round_idx for t in backend.tasks] == [0, 0, 0]
    assert backend.tasks[-1].clients == [2]
    assert backend.ended is result
    assert "Round 1 is retried (2 of 2)" in caplog.text


def test_a_round_still_incomplete_after_its_retries_fails_the_run(make_args):
    backend = ScriptedBackend(candidates=[0, 1, 2, 3], retries=1, failures=2)
    with pytest.raises(RoundIncompleteError, match="0 of 2 replied"):
        driver(make_args(comm_round=2, client_num_per_round=2)).run(backend)
    assert len(backend.tasks) == 2
    assert isinstance(backend.ended, RoundIncompleteError)


def test_an_update_that_does_not_fit_the_global_model_is_dropped_naming_the_client(make_args, caplog):
    class Misfits(ScriptedBackend):
        def train(self, task):
            updates = super().train(task)
            name, tensor = next(iter(updates[0].state.items()))
            updates[0].state[name] = torch.zeros(tensor.numel() + 1)
            updates[1].state[name] = tensor.double()
            del updates[2].state[name]
            return updates

    caplog.set_level("WARNING", logger="fedml")
    result = driver(make_args(comm_round=1, client_num_per_round=4)).run(Misfits(range(10)))
    assert result.final_metrics["test_accuracy"] >= 0
    dropped = [r.getMessage() for r in caplog.records if "does not fit the global model" in r.getMessage()]
    assert len(dropped) == 3
    assert "torch.float64" in dropped[1]
    assert "tensors missing" in dropped[2]
