import pytest
import torch

from fedml.core.algorithms import Update
from fedml.core.comm import Message, MessageKind
from fedml.core.round.wire import (
    hosted_clients,
    pack_assignment,
    pack_outcome,
    pack_updates,
    unpack_assignment,
    unpack_outcome,
    unpack_updates,
)
from fedml.errors import FedMLError, ProtocolError
from fedml.tracking import RunResult


def test_updates_survive_packing():
    state = {"w": torch.ones(2, 2), "b": torch.zeros(2)}
    extras = {"delta_c/w": torch.full((2, 2), 3.0)}
    updates = [Update(4, 12.0, state, {"train_loss": 0.5}, extras)]
    metadata, tensors = pack_updates(updates)
    (back,) = unpack_updates(Message(MessageKind.CLIENT_UPDATE, "1", "0", 0, metadata, tensors))
    assert (back.client_idx, back.weight, back.metrics) == (4, 12.0, {"train_loss": 0.5})
    assert list(back.state) == ["w", "b"]
    assert torch.equal(back.extras["delta_c/w"], extras["delta_c/w"])
    with pytest.raises(ProtocolError, match="incomplete"):
        unpack_updates(Message(MessageKind.CLIENT_UPDATE, "1", "0", 0, metadata, {}))


def test_assignments_carry_the_state_and_each_clients_payload():
    state = {"w": torch.ones(2)}
    payloads = {3: {"c/w": torch.full((2,), 2.0)}, 7: {}}
    metadata, tensors = pack_assignment(state, payloads)
    clients, back_state, back_payloads = unpack_assignment(
        Message(MessageKind.SYNC_MODEL, "0", "1", 0, metadata, tensors)
    )
    assert clients == [3, 7]
    assert torch.equal(back_state["w"], state["w"])
    assert torch.equal(back_payloads[3]["c/w"], payloads[3]["c/w"])
    assert back_payloads[7] == {}
    with pytest.raises(ProtocolError, match="does not name its clients"):
        unpack_assignment(Message(MessageKind.SYNC_MODEL, "0", "1", 0, {"clients": "all"}, tensors))


def test_a_peer_announces_its_clients_and_sample_counts():
    simulation = Message(MessageKind.INIT, "1", "0", -1, {"sample_counts": [5, 7]})
    assert hosted_clients(simulation) == {0: 5, 1: 7}
    silo = Message(MessageKind.INIT, "a", "0", -1, {"clients": [3], "sample_counts": [40]})
    assert hosted_clients(silo) == {3: 40}
    for bad in ({"clients": [3, 4], "sample_counts": [1]}, {"sample_counts": [True]}, {"clients": [1]}):
        with pytest.raises(ProtocolError, match="does not list its clients and their sample counts"):
            hosted_clients(Message(MessageKind.INIT, "a", "0", -1, bad))


def test_a_runs_outcome_survives_a_finish_message(tmp_path):
    result = RunResult(
        {"test_accuracy": 0.5}, [{"round": 1}], tmp_path, {"w": torch.ones(2)}, "vectorized", [0.1], {}
    )
    metadata, tensors = pack_outcome(result, None)
    back = unpack_outcome(Message(MessageKind.FINISH, "0", "1", -1, metadata, tensors), "the server")
    assert (back.final_metrics, back.run_dir, back.engine, back.round_seconds) == (
        {"test_accuracy": 0.5},
        tmp_path,
        "vectorized",
        [0.1],
    )
    assert torch.equal(back.model_state["w"], torch.ones(2))
    metadata, tensors = pack_outcome(None, ValueError("boom"))
    with pytest.raises(FedMLError, match="the server ended the run: ValueError: boom"):
        unpack_outcome(Message(MessageKind.FINISH, "0", "1", -1, metadata, tensors), "the server")
