import threading

import pytest
import torch

import fedml
from fedml.core.comm import LocalHub, Message, MessageKind
from fedml.core.round import AllReplies, RemoteBackend, RoundWorker, assign_clients
from fedml.errors import ProtocolError, TransportError
from fedml.ml import ClientTrainer
from fedml.simulation.sp import SPSimulator


def test_assign_clients_balances_sample_counts_deterministically():
    counts = [100, 10, 60, 50, 5, 40]
    shares = assign_clients(range(6), counts, workers=["1", "2", "3"])
    assert sorted(c for share in shares.values() for c in share) == list(range(6))
    loads = [sum(counts[c] for c in share) for share in shares.values()]
    assert sorted(loads) == [75, 90, 100]
    assert shares == assign_clients(range(6), counts, workers=["1", "2", "3"])


def test_assign_clients_gives_idle_workers_an_empty_list():
    assert assign_clients([3], [1, 1, 1, 1], workers=["1", "2"]) == {"1": [3], "2": []}


def test_assign_clients_sends_each_client_to_a_peer_that_hosts_it():
    hosts = {"a": {0, 1}, "b": {1, 2}}
    shares = assign_clients([0, 1, 2], {0: 5, 1: 5, 2: 5}, ["a", "b"], hosts)
    assert shares == {"a": [0], "b": [1, 2]}
    with pytest.raises(TransportError, match="no online peer hosts client 3"):
        assign_clients([3], {3: 1}, ["a", "b"], hosts)


def _simulator(args, trainer=None):
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    custom = trainer(model, args) if trainer is not None else None
    return SPSimulator(args, torch.device("cpu"), dataset, model, client_trainer=custom)


def run_over_local(args, workers=2, worker_trainer=None, timeout=20.0):
    """The MPI simulation's server and workers, as threads over the LOCAL transport."""
    hub = LocalHub(workers + 1)
    errors = []
    # Built before the worker threads: model creation seeds torch's global RNG, which threads share.
    server = _simulator(args)

    def work(rank):
        simulator = _simulator(args, worker_trainer)
        worker = RoundWorker(
            hub.endpoint(rank), simulator.local_backend(), simulator.sample_counts(), timeout
        )
        try:
            worker.run()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,), daemon=True) for r in range(1, workers + 1)]
    for thread in threads:
        thread.start()
    rounds = server.rounds()
    backend = RemoteBackend(
        hub.endpoint(0),
        AllReplies(timeout),
        "MPI",
        expected_peers=[str(r) for r in range(1, workers + 1)],
        join_timeout=timeout,
        client_num=server.dataset.client_num,
    )
    try:
        return rounds.run(backend)
    finally:
        for thread in threads:
            thread.join(timeout)


def test_round_over_local_transport_matches_sp(make_args):
    settings = {"comm_round": 3, "client_num_per_round": 5, "engine": "sequential"}
    result = run_over_local(make_args(**settings), workers=2)
    reference = _simulator(make_args(**settings)).run()
    assert all(
        torch.allclose(result.model_state[k], reference.model_state[k], atol=1e-6)
        for k in reference.model_state
    )
    assert result.final_metrics["test_accuracy"] == reference.final_metrics["test_accuracy"]


class FailingTrainer(ClientTrainer):
    def train(self, train_data, device, args):
        raise RuntimeError("disk on fire")


def test_a_worker_error_reaches_the_server_with_its_reason(make_args):
    with pytest.raises(TransportError, match=r"peer \d failed: RuntimeError\('disk on fire'\)"):
        run_over_local(make_args(comm_round=1), workers=2, worker_trainer=FailingTrainer)


def test_a_silent_worker_times_out_naming_it(make_args):
    args = make_args(comm_round=1)
    hub = LocalHub(2)
    server = _simulator(args)
    counts = server.sample_counts()
    worker = hub.endpoint(1)
    metadata = {
        "client_num": 10,
        "clients": sorted(counts),
        "sample_counts": [counts[c] for c in sorted(counts)],
    }
    worker.send(Message(MessageKind.INIT, "1", "0", -1, metadata))
    backend = RemoteBackend(hub.endpoint(0), AllReplies(0.3), "MPI", expected_peers=["1"], client_num=10)
    with pytest.raises(
        TransportError,
        match=r"round 1: train: 0 of 10 clients replied, 10 needed; "
        r"no CLIENT_UPDATE from peer\(s\) \['1'\] within 0.3 s",
    ):
        server.rounds().run(backend)
    assert worker.receive(timeout=1).kind == MessageKind.SYNC_MODEL
    finish = worker.receive(timeout=1)
    assert finish.kind == MessageKind.FINISH
    assert "no CLIENT_UPDATE" in finish.metadata["error"]


def test_a_worker_with_another_configuration_is_refused(make_args):
    hub = LocalHub(2)
    hub.endpoint(1).send(Message(MessageKind.INIT, "1", "0", -1, {"client_num": 7, "sample_counts": [1] * 7}))
    backend = RemoteBackend(hub.endpoint(0), AllReplies(1.0), "MPI", expected_peers=["1"], client_num=10)
    with pytest.raises(ProtocolError, match="peer 1 has 7 clients, the server 10: every process must load"):
        backend.open()
