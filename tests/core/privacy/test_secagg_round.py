"""Secure aggregation in the round: sp and the remote backend over in-process transports, refusals."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import fedml
from fedml.core.algorithms import create_algorithm
from fedml.core.comm import LocalHub, Message, MessageKind
from fedml.core.privacy.dp import clipped, delta_of
from fedml.core.privacy.secagg import sum_bound
from fedml.core.privacy.secagg.messages import MASKED, UNMASK
from fedml.core.round import Quorum, RemoteBackend, RoundTask, RoundWorker
from fedml.core.round.secure import (
    SecureLocalBackend,
    SecureRemoteBackend,
    secagg_settings,
    secure_remote,
    secure_worker,
)
from fedml.core.steps import build_steps, check_compatibility
from fedml.errors import SecAggError
from fedml.simulation.sp import SPSimulator

SECURE = {
    "enable_secure_aggregation": True,
    "engine": "sequential",
    "client_num_in_total": 6,
    "client_num_per_round": 6,
    "batch_size": 50,
}
"""A small secure run: six clients, all in every round (threshold 4), few steps each."""
HOSTS = {"1": [0, 1], "2": [2, 3], "3": [4, 5]}
"""Three peers hosting the six clients."""


def _simulator(args):
    dataset, output_dim = fedml.data.load(args)
    return SPSimulator(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim))


def _first_round(simulator):
    state = simulator.aggregator.get_model_params()
    clients = list(range(simulator.dataset.client_num))
    return RoundTask(0, state, clients, {}, len(clients))


def test_the_unmasked_mean_equals_the_plain_fedavg_mean_within_the_quantization_bound(make_args):
    # A coarse ring (8 bits over +-1) so the quantization error is visible, and must stay within bound.
    args = make_args(**SECURE, sa_clip_range=1.0, sa_bit_width=8)
    simulator = _simulator(args)
    local = simulator.local_backend()
    task = _first_round(simulator)
    updates = local.train(task)
    settings = secagg_settings(args)
    assert settings is not None
    summed = SecureLocalBackend(local, settings, simulator.steps).train(task)
    weight = sum(u.weight for u in updates)
    assert summed.weight == weight
    assert summed.clients == len(updates)
    bound = sum_bound(len(updates), 1.0, 8) / weight
    error = 0.0
    for name, tensor in task.global_state.items():
        deltas = [u.state[name].double() - tensor.double() for u in updates]
        assert max(d.abs().max().item() for d in deltas) < 1.0
        plain = tensor.double() + sum(u.weight * d for u, d in zip(updates, deltas, strict=True)) / weight
        error = max(error, (summed.state[name].double() - plain).abs().max().item())
    assert 0 < error <= bound + 1e-7
    # The loss travels in the masked vector too, clipped to the range like every coordinate.
    plain_loss = sum(u.weight * min(u.metrics["train_loss"], 1.0) for u in updates) / weight
    assert summed.metrics["train_loss"] == pytest.approx(plain_loss, abs=bound)


def test_a_secure_sp_run_reaches_the_plain_runs_accuracy(make_args):
    plain = _simulator(make_args(comm_round=3)).run()
    secure = _simulator(make_args(comm_round=3, enable_secure_aggregation=True)).run()
    gap = abs(plain.final_metrics["test_accuracy"] - secure.final_metrics["test_accuracy"])
    assert gap <= 0.005
    assert secure.final_metrics["clients"] == plain.final_metrics["clients"]


class Died(BaseException):
    """A peer process that dies: no error message reaches the server."""


def run_secure_over_local(args, die=(), die_at=UNMASK, timeout=1.0, plain=(), tamper=None):
    """A secure round's server and three peers as threads over the LOCAL transport.

    Peers in ``die`` die at stage ``die_at``; those in ``plain`` lack secure aggregation; peer 1's
    protocol replies pass through ``tamper``. Returns the run's result and every message the server's
    endpoint received.
    """
    hub = LocalHub(len(HOSTS) + 1)
    server = _simulator(args)
    endpoint = hub.endpoint(0)
    received: list[Message] = []
    receive = endpoint.receive

    def recording(timeout=None):
        message = receive(timeout)
        received.append(message)
        return message

    endpoint.receive = recording

    def work(peer):
        simulator = _simulator(args)
        counts = {c: simulator.dataset.local_sample_num(c) for c in HOSTS[peer]}
        worker = RoundWorker(hub.endpoint(int(peer)), simulator.local_backend(), counts, 30.0)
        if peer not in plain:
            secure_worker(worker, args, simulator.steps)
        if peer == "1" and tamper is not None:
            honest = worker.handlers[MessageKind.SECURE_AGGREGATION]
            worker.handlers[MessageKind.SECURE_AGGREGATION] = lambda message: tamper(*honest(message))
        if peer in die:
            respond = worker.handlers[MessageKind.SECURE_AGGREGATION]

            def dying(message):
                if message.metadata["stage"] == die_at:
                    raise Died
                return respond(message)

            worker.handlers[MessageKind.SECURE_AGGREGATION] = dying
        try:
            worker.run()
        except (Died, Exception):
            return

    threads = [threading.Thread(target=work, args=(p,), daemon=True) for p in HOSTS]
    for thread in threads:
        thread.start()
    remote = RemoteBackend(
        endpoint,
        Quorum(timeout, 1),
        "MPI",
        expected_peers=list(HOSTS),
        join_timeout=30.0,
        client_num=server.dataset.client_num,
    )
    backend = secure_remote(remote, args, server.steps, server.algorithm)
    assert isinstance(backend, SecureRemoteBackend)
    try:
        return server.rounds().run(backend), received
    finally:
        for thread in threads:
            thread.join(30.0)


def _masked_vectors(received):
    out = []
    for message in received:
        if message.kind == MessageKind.SECURE_AGGREGATION and message.metadata["stage"] == MASKED:
            out += [t for name, t in message.tensors.items() if name.endswith("/masked")]
    return out


def test_the_server_receives_only_masked_inputs_and_gets_the_sp_secure_model(make_args):
    args = make_args(comm_round=1, **SECURE)
    result, received = run_secure_over_local(args)
    reference = _simulator(make_args(comm_round=1, **SECURE)).run()
    for name, tensor in reference.model_state.items():
        assert torch.allclose(result.model_state[name], tensor, atol=1e-6)
    kinds = {m.kind for m in received}
    assert kinds <= {MessageKind.INIT, MessageKind.CLIENT_UPDATE, MessageKind.SECURE_AGGREGATION}
    for message in received:
        # No float tensor reaches the server: keys, sealed shares and ring elements only.
        assert all(t.dtype in (torch.uint8, torch.int64) for t in message.tensors.values())
        if message.kind == MessageKind.CLIENT_UPDATE:
            assert message.tensors == {}
            assert "updates" not in message.metadata
    masked = _masked_vectors(received)
    assert len(masked) == 6
    # A quantized weighted delta is far below 2**40; a masked one is spread over the whole ring.
    for vector in masked:
        assert np.mean(np.abs(vector.numpy().astype(np.float64)) > 2.0**40) > 0.99


def test_a_peer_dying_after_its_masked_input_is_recovered(make_args):
    args = make_args(comm_round=1, **SECURE)
    result, received = run_secure_over_local(args, die=("3",))
    reference = _simulator(make_args(comm_round=1, **SECURE)).run()
    # Its two clients' masked inputs arrived: their inputs are in the sum, their self masks removed.
    assert result.final_metrics["clients"] == 6
    for name, tensor in reference.model_state.items():
        assert torch.allclose(result.model_state[name], tensor, atol=1e-6)
    unmask = [
        m for m in received if m.kind == MessageKind.SECURE_AGGREGATION and m.metadata["stage"] == UNMASK
    ]
    assert sorted(m.sender for m in unmask) == ["1", "2"]


def test_too_many_peers_dying_fails_the_round_with_secagg_error(make_args):
    args = make_args(comm_round=1, **SECURE)
    with pytest.raises(SecAggError, match="below the threshold 4"):
        run_secure_over_local(args, die=("2", "3"))


def test_central_dp_under_secure_aggregation_clips_on_the_clients_with_equal_weights(make_args):
    dp = {"enable_dp": True, "dp_solution_type": "cdp", "noise_multiplier": 0.0, "clipping_norm": 0.05}
    args = make_args(**SECURE, **dp)
    simulator = _simulator(args)
    local = simulator.local_backend()
    task = _first_round(simulator)
    updates = local.train(task)
    settings = secagg_settings(args)
    assert settings is not None
    summed = SecureLocalBackend(local, settings, simulator.steps).train(task)
    assert any(
        "each client clips its delta to 0.05 before masking" in s.describe() for s in simulator.steps.all()
    )
    assert summed.weight == len(updates)
    deltas = [delta_of(clipped(u.state, task.global_state, 0.05)[0], task.global_state) for u in updates]
    bound = sum_bound(len(updates), settings.sa_clip_range, settings.sa_bit_width) / len(updates)
    for name, tensor in task.global_state.items():
        mean = tensor.double() + sum(d[name].double() for d in deltas) / len(deltas)
        assert torch.allclose(summed.state[name].double(), mean, atol=bound + 1e-7)


def test_central_dp_noise_goes_on_the_unmasked_mean(make_args):
    dp = {"enable_dp": True, "dp_solution_type": "cdp", "noise_multiplier": 1.0, "clipping_norm": 0.05}
    noisy_args = make_args(**SECURE, **dp)
    quiet_args = make_args(**SECURE, **{**dp, "noise_multiplier": 0.0})
    states = []
    for args in (noisy_args, quiet_args):
        simulator = _simulator(args)
        local = simulator.local_backend()
        settings = secagg_settings(args)
        assert settings is not None
        states.append(SecureLocalBackend(local, settings, simulator.steps).train(_first_round(simulator)))
    noise = torch.cat([(states[0].state[k] - states[1].state[k]).reshape(-1) for k in states[0].state])
    # std noise_multiplier * clip / clients = 0.05 / 6, on every coordinate of the mean.
    assert noise.std().item() == pytest.approx(0.05 / 6, rel=0.1)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"enable_defense": True, "defense_type": "median"}, "defense_args.defense_type median"),
        ({"federated_optimizer": "SCAFFOLD"}, "federated_optimizer SCAFFOLD"),
        (
            {
                "enable_dp": True,
                "dp_solution_type": "cdp",
                "noise_multiplier": 0.5,
                "adaptive_clipping": True,
            },
            "dp_args.adaptive_clipping",
        ),
        ({"enable_dp": True, "dp_solution_type": "dpsgd", "noise_multiplier": 0.5}, "dpsgd"),
    ],
)
def test_what_needs_individual_updates_is_refused_at_start(make_args, overrides, named):
    args = make_args(comm_round=1, **SECURE, **overrides)
    simulator = _simulator(args)
    with pytest.raises(SecAggError, match=rf"secure_aggregation_args.*{named}"):
        simulator.run()
    runs = Path(args.run_dir)
    assert not runs.exists() or not any(runs.iterdir())


def test_nccl_is_refused_naming_both(make_args):
    args = make_args(**SECURE)
    with pytest.raises(SecAggError, match=r"secure_aggregation_args.*comm_args.backend NCCL"):
        check_compatibility(build_steps(args), create_algorithm(args), "NCCL", presummed=True)


def test_a_training_reply_in_the_clear_is_refused():
    clear = Message(MessageKind.CLIENT_UPDATE, "1", "0", 0, {"updates": []}, {"0/state/w": torch.ones(2)})
    with pytest.raises(SecAggError, match="peer 1 sent its updates in the clear"):
        SecureRemoteBackend._trained(clear, [0])
    liar = Message(MessageKind.CLIENT_UPDATE, "1", "0", 0, {"secure": True, "trained": [5]})
    with pytest.raises(SecAggError, match="peer 1 reports training clients it was not assigned"):
        SecureRemoteBackend._trained(liar, [0])


def test_a_peer_without_secure_aggregation_never_sends_its_update_in_the_clear(make_args):
    args = make_args(comm_round=1, **SECURE)
    result, received = run_secure_over_local(args, plain=("3",))
    errors = [m for m in received if m.kind == MessageKind.ERROR]
    assert [m.sender for m in errors] == ["3"]
    assert "has no secure_aggregation_args enabled" in errors[0].metadata["error"]
    assert all(not m.tensors for m in received if m.kind == MessageKind.CLIENT_UPDATE)
    assert result.final_metrics["clients"] == 4


def test_a_peer_replying_for_a_client_it_was_not_asked_about_fails_the_round(make_args):
    def impersonate(kind, metadata, tensors):
        if metadata["stage"] == MASKED:
            metadata["parts"][0]["client"] = "4"
        return kind, metadata, tensors

    args = make_args(comm_round=1, **SECURE)
    with pytest.raises(SecAggError, match="peer 1 sent a sa_masked reply for client '4'"):
        run_secure_over_local(args, tamper=impersonate)
