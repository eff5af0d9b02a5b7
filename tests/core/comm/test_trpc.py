"""``TRPCTransport`` between real processes on 127.0.0.1, and the launch checks that need none."""

from __future__ import annotations

import multiprocessing
import os
import queue
import socket
import time
import traceback
from typing import Any

import pytest
import torch

from fedml.core.comm import Message, MessageKind
from fedml.core.comm.trpc import TRPCTransport, read_launch
from fedml.errors import ConfigError, ProtocolError, TransportError

LARGE = torch.arange(3 << 20, dtype=torch.float32)
"""12 MiB: well past the 4 MiB that some RPC and gRPC stacks take as a message limit."""
SMALL = {"w": torch.tensor([[0.25, -1.5]]), "ids": torch.tensor([2**40 + 1, -7]), "m": torch.tensor([True])}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def outcome(action: Any) -> str:
    try:
        action()
    except (TransportError, ProtocolError) as exc:
        return type(exc).__name__
    return "no error"


def exchange(transport: TRPCTransport) -> dict[str, Any]:
    """What each rank of the 3-rank group does; returns what it saw (rank 2 aborts after its send)."""
    from torch.distributed import rpc

    from fedml.core.comm.trpc import deliver

    rank, seen = transport.rank, {}
    if rank == 1:
        for i in range(3):
            transport.send(Message(MessageKind.CLIENT_UPDATE, "1", "0", round_idx=i, tensors=SMALL))
        # Bad payloads only once rank 0 holds every good message, so its receives see them in order.
        seen["go"] = transport.receive(timeout=30).kind.name
        rpc.rpc_sync("0", deliver, args=(torch.tensor([1, 2, 3], dtype=torch.uint8),))
        rpc.rpc_sync("0", deliver, args=(torch.zeros(4),))
        seen["to a rank that is not there"] = outcome(
            lambda: transport.send(Message(MessageKind.INIT, "1", "5"))
        )
    if rank == 2:
        transport.send(
            Message(MessageKind.GOSSIP, "2", "0", metadata={"note": "h\u00e9llo"}, tensors={"x": LARGE})
        )
        # An aborted rank never reaches close; the others must still leave within their bound.
        transport.abort(3)
    if rank == 0:
        messages = [transport.receive(timeout=30) for _ in range(4)]
        from_1 = [m for m in messages if m.sender == "1"]
        seen["rounds from 1, in order"] = [m.round_idx for m in from_1]
        seen["small tensors intact"] = all(
            m.tensors.keys() == SMALL.keys() and all(torch.equal(m.tensors[k], SMALL[k]) for k in SMALL)
            for m in from_1
        )
        (large,) = [m for m in messages if m.sender == "2"]
        seen["large"] = [large.kind.name, large.metadata, torch.equal(large.tensors["x"], LARGE)]
        transport.send(Message(MessageKind.SYNC_MODEL, "0", "1"))
        seen["bad bytes"] = [outcome(transport.receive), outcome(transport.receive)]
        started = time.monotonic()
        seen["nothing pending"] = outcome(lambda: transport.receive(timeout=0.3))
        seen["waited"] = time.monotonic() - started
        transport.send(Message(MessageKind.FINISH, "0", "1"))
    else:
        seen["finish"] = transport.receive(timeout=30).kind.name
    started = time.monotonic()
    transport.close()
    seen["close seconds"] = time.monotonic() - started
    seen["send after close"] = outcome(lambda: transport.send(Message(MessageKind.INIT, str(rank), "0")))
    transport.close()
    return seen


def rank_main(rank: int, world_size: int, port: int, results: Any) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    os.environ.pop("TP_SOCKET_IFNAME", None)
    os.environ.pop("GLOO_SOCKET_IFNAME", None)
    torch.set_num_threads(1)
    try:
        transport = TRPCTransport(timeout=20, shutdown_timeout=1.5)
        results.put((rank, exchange(transport)))
    except BaseException:
        results.put((rank, {"error": traceback.format_exc()}))


def run_group(world_size: int, timeout: float = 60) -> tuple[dict[int, Any], dict[int, int]]:
    """Run ``exchange`` on ``world_size`` spawned ranks; return what each reported and its exit code."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=rank_main, args=(rank, world_size, port, results))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    seen: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while any(p.is_alive() for p in processes) or not results.empty():
            try:
                rank, value = results.get(timeout=0.5)
                seen[rank] = value
            except queue.Empty:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the group did not end within {timeout} s; saw {seen}")
        for process in processes:
            process.join(timeout=5)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    return seen, {rank: process.exitcode for rank, process in enumerate(processes)}


def test_three_ranks_exchange_messages_large_ones_and_bad_bytes_and_leave_after_one_aborts():
    seen, codes = run_group(3)
    assert codes == {0: 0, 1: 0, 2: 3}, seen
    assert 2 not in seen
    server = seen[0]
    assert server["rounds from 1, in order"] == [0, 1, 2]
    assert server["small tensors intact"]
    assert server["large"] == ["GOSSIP", {"note": "h\u00e9llo"}, True]
    assert server["bad bytes"] == ["ProtocolError", "ProtocolError"]
    assert server["nothing pending"] == "TransportError"
    assert 0.3 <= server["waited"] < 5
    assert seen[1]["to a rank that is not there"] == "TransportError"
    assert [seen[1]["go"], seen[1]["finish"]] == ["SYNC_MODEL", "FINISH"]
    for rank in (0, 1):
        assert seen[rank]["send after close"] == "TransportError"
        assert 1.4 <= seen[rank]["close seconds"] < 6


LOOPBACK = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize("missing", [["RANK"], ["WORLD_SIZE", "MASTER_PORT"]])
def test_a_launch_without_torchruns_variables_names_them_and_the_command(missing):
    env = {k: v for k, v in LOOPBACK.items() if k not in missing}
    with pytest.raises(ConfigError) as error:
        read_launch(env)
    assert f"{', '.join(missing)} not set" in str(error.value)
    assert "torchrun --nproc-per-node" in str(error.value)


@pytest.mark.parametrize("host", ["10.1.2.3", "node1", "0.0.0.0"])
def test_a_master_address_off_this_host_is_refused_unless_insecure_remote(host, monkeypatch):
    env = {**LOOPBACK, "MASTER_ADDR": host}
    with pytest.raises(ConfigError, match=f"MASTER_ADDR {host} is not a loopback address.*insecure_remote"):
        read_launch(env)
    assert read_launch(env, insecure_remote=True).master_addr == host
    monkeypatch.setattr(os, "environ", env)
    with pytest.raises(ConfigError, match="insecure_remote"):
        TRPCTransport()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10"])
def test_loopback_master_addresses_are_accepted(host):
    launch = read_launch({**LOOPBACK, "MASTER_ADDR": host, "RANK": "1"})
    assert (launch.rank, launch.world_size, launch.master_addr, launch.master_port) == (1, 2, host, 29500)


def test_a_socket_interface_variable_beyond_loopback_is_refused_on_a_loopback_run(monkeypatch):
    monkeypatch.setattr(os, "environ", {**LOOPBACK, "TP_SOCKET_IFNAME": "eth0"})
    with pytest.raises(ConfigError, match="TP_SOCKET_IFNAME=eth0"):
        TRPCTransport()


def test_malformed_launch_variables_are_config_errors():
    with pytest.raises(ConfigError, match="not a number"):
        read_launch({**LOOPBACK, "RANK": "one"})
    with pytest.raises(ConfigError, match="outside WORLD_SIZE"):
        read_launch({**LOOPBACK, "RANK": "2"})
