"""PyTorch RPC transport (``torch.distributed.rpc``, TensorPipe): codec bytes as a uint8 tensor per call.

Security: torch RPC frames every call with torch's internal pickler, so any process that can reach a
rank's RPC listener (or the rendezvous store at ``MASTER_ADDR:MASTER_PORT``) can make that rank
unpickle, which runs arbitrary code. fedml's own payload is codec bytes and is never pickled by
fedml, but that does not protect the frame around it. This transport therefore fails closed: it runs
on a loopback ``MASTER_ADDR`` only, with TensorPipe's and gloo's sockets pinned to the loopback
interface, unless ``comm_args.insecure_remote: true`` says that every host that can reach the ranks
is trusted (a private cluster network).

Each ``send`` is one blocking ``rpc_sync`` of ``deliver`` on the receiving rank, which queues the
tensor for that process's ``receive``; so messages from one sender arrive in the order sent, and a
send returns once the receiver holds the bytes. Waits are bounded by the transport's timeout.
"""

from __future__ import annotations

import datetime
import logging
import os
import queue
import socket
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedml.core.comm.base import ClosingContext
from fedml.core.comm.codec import DEFAULT_MAX_BYTES, decode, encode
from fedml.core.comm.message import Message, rank_of
from fedml.core.comm.network import is_loopback
from fedml.errors import ConfigError, ProtocolError, TransportError
from fedml.tracking import role_logger

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""The environment variables ``torchrun`` sets and this transport needs."""
TORCHRUN_HINT = "torchrun --nproc-per-node 3 your_script.py --cf your_config.yaml"
"""How to launch a TRPC run, quoted in errors."""
_IFNAME_VARIABLES = ("TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")
"""The variables that choose the interface TensorPipe's and gloo's sockets listen on."""

_REPLY_GRACE = 0.2
"""Seconds a rank leaving alone waits for its agent to send the replies already due."""
_LEAVING, _LEFT = "fedml/trpc/leaving", "fedml/trpc/left"
"""Rendezvous-store keys of ``close``'s barrier: how many ranks are closing, and that all are."""

_inbox: queue.Queue[Any] = queue.Queue()
"""This process's received payloads, filled by ``deliver`` on RPC threads and read by ``receive``."""


def deliver(payload: torch.Tensor) -> None:
    """Queue ``payload`` for this process's ``TRPCTransport.receive``; the RPC target of every send.

    It runs on one of the RPC agent's threads. ``receive`` checks and decodes the payload, so
    anything a peer sends is validated there.
    """
    _inbox.put(payload)


@dataclass(frozen=True)
class RPCLaunch:
    """Where this process sits in a ``torchrun`` job.

    Attributes
    ----------
    rank, world_size
        This process's rank and the number of processes.
    master_addr, master_port
        The rendezvous address (rank 0's host, or torchrun's agent store).

    """

    rank: int
    world_size: int
    master_addr: str
    master_port: int


def read_launch(env: Mapping[str, str], insecure_remote: bool = False) -> RPCLaunch:
    """Read ``torchrun``'s variables from ``env`` and refuse a rendezvous address off this host.

    Parameters
    ----------
    env
        The environment (``os.environ``).
    insecure_remote
        ``comm_args.insecure_remote``: allow a ``MASTER_ADDR`` that is not a loopback address.

    Raises
    ------
    ConfigError
        If a variable is missing or malformed (the message gives the torchrun command), or
        ``MASTER_ADDR`` is not a loopback address and ``insecure_remote`` is false.

    Examples
    --------
    >>> env = {"RANK": "1", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    >>> read_launch(env).world_size
    3

    """
    missing = [name for name in LAUNCH_VARIABLES if not env.get(name)]
    if missing:
        raise ConfigError(
            f"comm_args.backend TRPC: {', '.join(missing)} not set in the environment; "
            f"launch with torchrun, e.g.: {TORCHRUN_HINT}"
        )
    try:
        launch = RPCLaunch(
            int(env["RANK"]), int(env["WORLD_SIZE"]), env["MASTER_ADDR"], int(env["MASTER_PORT"])
        )
    except ValueError as exc:
        raise ConfigError(f"comm_args.backend TRPC: a launch variable is not a number ({exc})") from exc
    if not 0 <= launch.rank < launch.world_size:
        raise ConfigError(
            f"comm_args.backend TRPC: RANK={launch.rank} is outside WORLD_SIZE={launch.world_size}"
        )
    if not is_loopback(launch.master_addr) and not insecure_remote:
        raise ConfigError(
            f"comm_args.backend TRPC: MASTER_ADDR {launch.master_addr} is not a loopback address, and torch "
            "RPC unpickles what any process reaching its ports sends (arbitrary code); run on one host, "
            "or on a trusted cluster network also set comm_args.insecure_remote: true to force it"
        )
    return launch


def loopback_interface() -> str:
    """Return the name of this host's loopback network interface (``lo`` on Linux, ``lo0`` on macOS).

    Raises
    ------
    ConfigError
        If neither exists; the message says which variables to set instead.

    """
    names = {name for _, name in socket.if_nameindex()}
    for name in ("lo", "lo0"):
        if name in names:
            return name
    raise ConfigError(
        "comm_args.backend TRPC: no loopback interface (lo, lo0) found; set TP_SOCKET_IFNAME and "
        "GLOO_SOCKET_IFNAME to this host's loopback interface"
    )


class TRPCTransport(ClosingContext):
    """Point-to-point messages between the ranks of a ``torchrun`` job over ``torch.distributed.rpc``.

    Joins the RPC group on construction (every rank must construct one) as worker ``str(rank)``; rank,
    world size and rendezvous come from ``torchrun``'s environment. All ranks call ``close`` at the
    end: it waits, at most ``shutdown_timeout`` seconds, until every rank has.

    Parameters
    ----------
    timeout
        Default seconds ``send`` and ``receive`` wait before raising ``TransportError``.
    max_bytes
        Largest message accepted (and sent).
    insecure_remote
        ``comm_args.insecure_remote``: allow a non-loopback ``MASTER_ADDR`` (see the module's note).
    shutdown_timeout
        Seconds ``close`` waits for the other ranks; ``timeout`` by default.
    launch
        Where this process sits; read from ``os.environ`` by ``read_launch`` by default.

    Raises
    ------
    ConfigError
        If not launched by ``torchrun``, or the launch is refused (``read_launch``).
    TransportError
        If the RPC group cannot be joined.

    """

    def __init__(
        self,
        timeout: float = 300.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        insecure_remote: bool = False,
        shutdown_timeout: float | None = None,
        launch: RPCLaunch | None = None,
    ) -> None:
        global _inbox
        from torch.distributed import rpc

        if not rpc.is_available():
            raise ImportError(
                "comm_args.backend TRPC needs torch.distributed.rpc, which this torch build lacks; "
                "install a torch wheel built with distributed support (the Linux wheels are)"
            )
        self.rpc = rpc
        launch = launch or read_launch(os.environ, insecure_remote)
        self.rank = launch.rank
        self.world_size = launch.world_size
        self.address = str(self.rank)
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.shutdown_timeout = timeout if shutdown_timeout is None else shutdown_timeout
        self.log = role_logger("Server" if self.rank == 0 else "Client", self.rank)
        options = self._options(launch, insecure_remote)
        _inbox = queue.Queue()
        self._inbox = _inbox
        try:
            with warnings.catch_warnings():
                # torch's RPC start-up uses a gloo group in a way torch itself has deprecated.
                warnings.filterwarnings("ignore", message="You are using a Backend", category=UserWarning)
                rpc.init_rpc(
                    self.address,
                    rank=self.rank,
                    world_size=self.world_size,
                    rpc_backend_options=options,
                )
        except RuntimeError as exc:
            raise TransportError(
                f"rank {self.rank}: could not join the RPC group at {launch.master_addr}:"
                f"{launch.master_port}: {exc}"
            ) from exc
        self.closed = False

    def _options(self, launch: RPCLaunch, insecure_remote: bool) -> Any:
        options: dict[str, Any] = {"init_method": "env://", "rpc_timeout": self.timeout}
        if is_loopback(launch.master_addr):
            # By default TensorPipe and gloo listen on the address the host name resolves to, which
            # other hosts may reach; a loopback run keeps every socket on the loopback interface.
            interface = loopback_interface()
            for name in _IFNAME_VARIABLES:
                chosen = os.environ.setdefault(name, interface)
                if chosen != interface and not insecure_remote:
                    raise ConfigError(
                        f"comm_args.backend TRPC: {name}={chosen} would open RPC sockets beyond this "
                        f"host while MASTER_ADDR is {launch.master_addr}; unset it, or set "
                        "comm_args.insecure_remote: true to force it"
                    )
            # Only same-host transports and CPU channels: ibv and the multiplexed uv channel open
            # listeners of their own.
            options.update(_transports=["shm", "uv"], _channels=["cma", "basic"])
        return self.rpc.TensorPipeRpcBackendOptions(**options)

    def send(self, message: Message) -> None:
        """Send ``message`` to rank ``message.receiver``; returns once the receiver has queued it."""
        self._check_open()
        dest = rank_of(message.receiver, self.world_size)
        data = encode(message)
        if len(data) > self.max_bytes:
            raise TransportError(f"message of {len(data)} bytes exceeds the limit of {self.max_bytes} bytes")
        payload = torch.frombuffer(data, dtype=torch.uint8)
        try:
            self.rpc.rpc_sync(str(dest), deliver, args=(payload,), timeout=self.timeout)
        except RuntimeError as exc:
            raise TransportError(
                f"rank {self.rank}: sending {message.kind.name} to rank {dest} did not complete within "
                f"{self.timeout} s (comm_args.timeout); is the peer alive? ({exc})"
            ) from exc

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next message from any rank, waiting at most ``timeout`` seconds."""
        self._check_open()
        wait = self.timeout if timeout is None else timeout
        try:
            payload = self._inbox.get(timeout=wait)
        except queue.Empty:
            raise TransportError(
                f"rank {self.rank}: no message arrived within {wait} s (comm_args.timeout); "
                "is the peer alive?"
            ) from None
        if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1):
            raise ProtocolError(f"rank {self.rank}: received a payload that is not a 1-D uint8 tensor")
        return decode(np.ascontiguousarray(payload.numpy()).data, self.max_bytes)

    def close(self, graceful: bool = True) -> None:
        """Leave the RPC group; idempotent.

        ``graceful`` (every rank at the end of a run) first waits, at most ``shutdown_timeout``
        seconds, until every rank has called it, then shuts the group down together. If some rank
        does not come (it died), this process's agent shuts down alone after a warning, as with
        ``graceful=False`` (after an error), which does so at once.
        """
        if self.closed:
            return
        self.closed = True
        if graceful and not self._all_leaving():
            graceful = False
        if not graceful:
            # A call's reply leaves after its target returned, just after ``receive`` saw the message:
            # a moment lets the agent answer the last one (often a FINISH) before it stops.
            time.sleep(_REPLY_GRACE)
        try:
            self.rpc.shutdown(graceful=graceful, timeout=self.shutdown_timeout)
        except RuntimeError as exc:
            self.log.warning("The RPC group did not shut down cleanly; this rank left it alone (%s)", exc)

    def _all_leaving(self) -> bool:
        """Meet every rank on the rendezvous store, within ``shutdown_timeout``; return whether all came.

        torch's own graceful shutdown has several phases, each waiting up to the RPC timeout for a
        rank that died; this barrier lets a rank give up after one bounded wait.
        """
        agent: Any = self.rpc.api._get_current_rpc_agent()
        store = agent.store
        try:
            store.set_timeout(datetime.timedelta(seconds=self.shutdown_timeout))
            if store.add(_LEAVING, 1) == self.world_size:
                store.set(_LEFT, b"1")
            store.wait([_LEFT])
        except RuntimeError as exc:
            self.log.warning(
                "Not every rank closed the transport within %s s; leaving the RPC group alone (%s)",
                self.shutdown_timeout,
                exc,
            )
            return False
        return True

    def abort(self, code: int = 1) -> None:
        """End this process at once with exit status ``code``; used after a fatal error so no rank hangs.

        ``torchrun`` then stops the other ranks of the job, as ``mpirun`` does after ``MPI_Abort``.
        """
        self.log.error("Ending rank %d with exit status %d", self.rank, code)
        for handler in logging.getLogger("fedml").handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _check_open(self) -> None:
        if self.closed:
            raise TransportError(f"rank {self.rank}: the transport is closed")
