"""``MPITransport`` between two real ``mpirun`` ranks: one launch runs every check, the tests read its log."""

import json

import pytest

from ...simulation.launchers import BIN, launch, launcher

SCRIPT = r"""
import json
import sys
import traceback

import torch

from fedml.core.comm import Message, MessageKind, encode
from fedml.core.comm.mpi import MPITransport
from fedml.errors import ProtocolError, TransportError


def record(rank, check, value):
    with open(f"{sys.argv[1]}/records-{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"check": check, "value": value}) + "\n")


def outcome(action):
    try:
        action()
    except (TransportError, ProtocolError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def describe(message):
    return {
        "kind": message.kind.name,
        "sender": message.sender,
        "receiver": message.receiver,
        "round": message.round_idx,
        "metadata": message.metadata,
        "tensors": {
            name: [str(t.dtype), list(t.shape), t.tolist()] for name, t in sorted(message.tensors.items())
        },
    }


SENT = {
    "w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t() / 4,
    "ids": torch.tensor([2**40 + 1, -7, 0], dtype=torch.int64),
    "mask": torch.tensor([True, False, True]),
}
METADATA = {"clients": [3, 7], "samples": {"3": 120, "7": 80}, "note": "h\u00e9llo", "lr": 0.01}


def main(transport):
    rank = transport.rank
    comm = transport.comm
    record(rank, "identity", [transport.address, transport.world_size])

    if rank == 0:
        transport.send(Message(MessageKind.SYNC_MODEL, "0", "1", 2, METADATA, SENT))
        reply = transport.receive()
        record(0, "reply", describe(reply))
        record(0, "send_to_5", outcome(lambda: transport.send(Message(MessageKind.INIT, "0", "5"))))
        small = MPITransport(timeout=30.0, max_bytes=1000)
        big = Message(MessageKind.SYNC_MODEL, "0", "1", tensors={"w": torch.zeros(1000)})
        record(0, "big_size", len(encode(big)))
        record(0, "big_send", outcome(lambda: small.send(big)))
        comm.Barrier()  # the refused send is over
        comm.Barrier()  # rank 1 has looked for it
        transport.send(big)
        comm.Barrier()  # rank 1 has received it
        record(0, "timeout", outcome(lambda: transport.receive(timeout=0.2)))
    else:
        message = transport.receive()
        record(1, "received", describe(message))
        echo = {name: tensor.clone() for name, tensor in message.tensors.items()}
        echo["w_sum"] = message.tensors["w"].sum().reshape(1)
        echo["mask"] = ~message.tensors["mask"]
        metadata = {"echo": message.metadata}
        reply = Message(MessageKind.CLIENT_UPDATE, "1", "0", message.round_idx, metadata, echo)
        transport.send(reply)
        comm.Barrier()  # rank 0's refused send is over
        record(1, "after_refused_send", outcome(lambda: transport.receive(timeout=0.2)))
        comm.Barrier()  # rank 0 sends the big message now
        small = MPITransport(timeout=30.0, max_bytes=1000)
        record(1, "big_receive", outcome(lambda: small.receive(timeout=30.0)))
        comm.Barrier()  # rank 0 sends nothing more
        record(1, "timeout", outcome(lambda: transport.receive(timeout=0.2)))
    record(rank, "done", True)


transport = MPITransport(timeout=30.0)
try:
    main(transport)
except BaseException:
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    transport.abort(1)  # end both ranks at once instead of leaving the other one waiting
"""


@pytest.fixture(scope="module")
def mpi_records(tmp_path_factory):
    """Run the script on two ranks once; return the finished process and each rank's records."""
    tmp_path = tmp_path_factory.mktemp("mpi-transport")
    script = tmp_path / "transport_checks.py"
    script.write_text(SCRIPT, encoding="utf-8")
    command = [launcher("mpirun"), "-np", "2", str(BIN / "python"), str(script), str(tmp_path)]
    done, _ = launch(command, tmp_path, timeout=120)
    records: dict[int, dict[str, object]] = {}
    for rank in (0, 1):
        path = tmp_path / f"records-{rank}.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        records[rank] = {item["check"]: item["value"] for item in map(json.loads, lines)}
    return done, records


def test_both_ranks_run_every_check_and_exit_cleanly(mpi_records):
    done, records = mpi_records

    assert done.returncode == 0, done.stdout + done.stderr
    assert records[0].get("done") is True, done.stdout + done.stderr
    assert records[1].get("done") is True, done.stdout + done.stderr


def test_each_rank_has_its_address_and_the_world_size(mpi_records):
    _, records = mpi_records

    assert records[0]["identity"] == ["0", 2]
    assert records[1]["identity"] == ["1", 2]


def test_rank_1_receives_tensors_and_metadata_exactly(mpi_records):
    _, records = mpi_records

    received = records[1]["received"]

    assert received["kind"] == "SYNC_MODEL"
    assert (received["sender"], received["receiver"], received["round"]) == ("0", "1", 2)
    assert received["metadata"] == {
        "clients": [3, 7],
        "samples": {"3": 120, "7": 80},
        "note": "héllo",
        "lr": 0.01,
    }
    assert received["tensors"] == {
        "ids": ["torch.int64", [3], [2**40 + 1, -7, 0]],
        "mask": ["torch.bool", [3], [True, False, True]],
        "w": ["torch.float32", [3, 2], [[0.0, 0.75], [0.25, 1.0], [0.5, 1.25]]],
    }


def test_rank_0_gets_the_reply_of_rank_1(mpi_records):
    _, records = mpi_records

    reply = records[0]["reply"]

    assert (reply["kind"], reply["sender"], reply["receiver"], reply["round"]) == (
        "CLIENT_UPDATE",
        "1",
        "0",
        2,
    )
    assert reply["metadata"] == {"echo": records[1]["received"]["metadata"]}
    assert reply["tensors"]["ids"] == records[1]["received"]["tensors"]["ids"]
    assert reply["tensors"]["mask"] == ["torch.bool", [3], [False, True, False]]
    assert reply["tensors"]["w_sum"] == ["torch.float32", [1], [3.75]]


def test_sending_to_a_rank_outside_the_world_is_a_transport_error(mpi_records):
    _, records = mpi_records

    assert records[0]["send_to_5"] == "TransportError: no rank '5' (world size 2)"


def test_a_message_over_max_bytes_is_refused_on_send_and_never_arrives(mpi_records):
    _, records = mpi_records

    size = records[0]["big_size"]

    assert size > 1000
    assert records[0]["big_send"] == (
        f"TransportError: message of {size} bytes exceeds the limit of 1000 bytes"
    )
    assert records[1]["after_refused_send"].startswith("TransportError: rank 1: no message arrived")


def test_a_message_over_max_bytes_is_refused_on_receive(mpi_records):
    _, records = mpi_records

    size = records[0]["big_size"]

    assert (
        records[1]["big_receive"] == f"ProtocolError: message of {size} bytes exceeds the limit of 1000 bytes"
    )


@pytest.mark.parametrize("rank", [0, 1])
def test_a_receive_timeout_names_the_rank_and_the_setting(mpi_records, rank):
    _, records = mpi_records

    error = records[rank]["timeout"]

    assert error.startswith(f"TransportError: rank {rank}: no message arrived within 0.2 s")
    assert "comm_args.timeout" in error
