import threading

import pytest
import torch

import fedml
from fedml.core.algorithms import create_algorithm
from fedml.core.comm import LocalHub, Message, MessageKind
from fedml.core.remote_round import (
    RoundServer,
    RoundWorker,
    assign_clients,
    pack_assignment,
    pack_updates,
    unpack_assignment,
    unpack_updates,
)
from fedml.core.round import FederatedRound
from fedml.errors import ProtocolError, TransportError
from fedml.ml import ClientTrainer, ServerAggregator
from fedml.simulation.sp import SPSimulator


def test_assign_clients_balances_sample_counts_deterministically():
    counts = [100, 10, 60, 50, 5, 40]
    shares = assign_clients(range(6), counts, workers=[1, 2, 3])
    assert sorted(c for share in shares.values() for c in share) == list(range(6))
    loads = [sum(counts[c] for c in share) for share in shares.values()]
    assert sorted(loads) == [75, 90, 100]
    assert shares == assign_clients(range(6), counts, workers=[1, 2, 3])


def test_assign_clients_gives_idle_workers_an_empty_list():
    assert assign_clients([3], [1, 1, 1, 1], workers=[1, 2]) == {1: [3], 2: []}


def test_updates_survive_packing():
    state = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    extras = {"delta_c/w": torch.full((2, 2), 3.0)}
    updates = [fedml.core.algorithms.Update(4, 12.0, state, {"train_loss": 0.5}, extras)]
    metadata, tensors = pack_updates(updates)
    (back,) = unpack_updates(Message(MessageKind.CLIENT_UPDATE, 1, 0, 0, metadata, tensors))
    assert (back.client_idx, back.weight, back.metrics) == (4, 12.0, {"train_loss": 0.5})
    assert list(back.state) == ["w", "b"]
    assert torch.equal(back.extras["delta_c/w"], extras["delta_c/w"])
    with pytest.raises(ProtocolError, match="incomplete"):
        unpack_updates(Message(MessageKind.CLIENT_UPDATE, 1, 0, 0, metadata, {}))


def test_assignments_carry_the_state_and_each_clients_payload():
    state = {"w": torch.ones(2)}
    payloads = {3: {"c/w": torch.full((2,), 2.0)}, 7: {}}
    metadata, tensors = pack_assignment(state, payloads)
    clients, back_state, back_payloads = unpack_assignment(
        Message(MessageKind.SYNC_MODEL, 0, 1, 0, metadata, tensors)
    )
    assert clients == [3, 7]
    assert torch.equal(back_state["w"], state["w"])
    assert torch.equal(back_payloads[3]["c/w"], payloads[3]["c/w"])
    assert back_payloads[7] == {}
    with pytest.raises(ProtocolError, match="does not name its clients"):
        unpack_assignment(Message(MessageKind.SYNC_MODEL, 0, 1, 0, {"clients": "all"}, tensors))


def server_rounds(args, dataset, model):
    return FederatedRound(
        args,
        torch.device("cpu"),
        dataset,
        create_algorithm(args),
        ClientTrainer(model, args),
        ServerAggregator(model, args),
    )


def _parts(args):
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return dataset, model


def run_over_local(args, workers=2, worker_trainer=ClientTrainer, timeout=20.0):
    hub = LocalHub(workers + 1)
    dataset, model = _parts(args)
    errors = []

    def work(rank):
        _, worker_model = _parts(args)
        worker = RoundWorker(
            hub.endpoint(rank),
            dataset,
            create_algorithm(args),
            args,
            torch.device("cpu"),
            worker_trainer(worker_model, args),
            ServerAggregator(worker_model, args),
            timeout,
        )
        try:
            worker.run()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,), daemon=True) for r in range(1, workers + 1)]
    for thread in threads:
        thread.start()
    rounds = server_rounds(args, dataset, model)
    try:
        return RoundServer(rounds, hub.endpoint(0), range(1, workers + 1), timeout).run()
    finally:
        for thread in threads:
            thread.join(timeout)


def test_round_over_local_transport_matches_sp(make_args):
    settings = {"comm_round": 3, "client_num_per_round": 5, "engine": "sequential"}
    result = run_over_local(make_args(**settings), workers=2)
    sp = SPSimulator(make_args(**settings), torch.device("cpu"), *_parts(make_args()))
    reference = sp.run()
    assert all(
        torch.allclose(result.model_state[k], reference.model_state[k], atol=1e-6)
        for k in reference.model_state
    )
    assert result.final_metrics["test_accuracy"] == reference.final_metrics["test_accuracy"]


class FailingTrainer(ClientTrainer):
    def train(self, train_data, device, args):
        raise RuntimeError("disk on fire")


def test_a_worker_error_reaches_the_server_with_its_reason(make_args):
    with pytest.raises(TransportError, match=r"worker rank \d failed: RuntimeError\('disk on fire'\)"):
        run_over_local(make_args(comm_round=1), workers=2, worker_trainer=FailingTrainer)


def test_a_silent_worker_times_out_naming_it(make_args):
    args = make_args(comm_round=1)
    hub = LocalHub(2)
    dataset, model = _parts(args)
    hub.endpoint(1).send(Message(MessageKind.INIT, 1, 0, -1, {"client_num": dataset.client_num}))
    rounds = server_rounds(args, dataset, model)
    with pytest.raises(
        TransportError, match=r"round 1: no CLIENT_UPDATE from worker rank\(s\) \[1\] within 0.3 s"
    ):
        RoundServer(rounds, hub.endpoint(0), [1], timeout=0.3).run()
    worker = hub.endpoint(1)
    assert worker.receive(timeout=1).kind == MessageKind.SYNC_MODEL
    finish = worker.receive(timeout=1)
    assert finish.kind == MessageKind.FINISH
    assert "no CLIENT_UPDATE" in finish.metadata["error"]
