"""The ``Transport`` protocol every backend implements, and the registry that builds one by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from fedml.core.comm.message import Message
from fedml.core.registry import Registry


@runtime_checkable
class Transport(Protocol):
    """Moves ``Message`` objects between the processes of one run.

    ``address`` is this process's peer id (for MPI and in-process transports its ``rank`` as a decimal
    string); ``world_size`` the number of ranks. ``send`` delivers a message to ``message.receiver``;
    ``receive`` returns the next message addressed here, waiting at most
    ``timeout`` seconds (``None``: the transport's default) and raising ``TransportError`` when none
    arrives. Both raise ``ProtocolError`` for bytes that are not a valid message.
    """

    address: str
    rank: int
    world_size: int

    def send(self, message: Message) -> None:
        """Deliver ``message`` to ``message.receiver``."""
        ...

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next message for this process."""
        ...

    def close(self) -> None:
        """Release the transport's resources; idempotent."""
        ...

    def __enter__(self) -> Transport: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class JobTransport(Transport, Protocol):
    """A transport among the processes of one launched job (``mpirun``, ``torchrun``) that can end it.

    ``abort(code)`` ends the whole job after a fatal error, so that no rank is left waiting.
    """

    def abort(self, code: int = 1) -> None:
        """End the job with exit status ``code``."""
        ...


class ClosingContext:
    """Mixin giving a transport ``with`` support: ``__exit__`` calls ``close``."""

    def close(self) -> None:
        """Release resources (overridden by each transport)."""

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


TRANSPORTS: Registry[Callable[..., Transport]] = Registry(
    "transport", key="comm_args.backend", case_sensitive=False
)
"""Transports by ``comm_args.backend`` name (case-insensitive)."""


def register_transport(
    name: str, factory: Callable[..., Transport] | str, extra: str | None = None, settings: Any = None
) -> None:
    """Make a transport available as ``comm_args.backend: name`` (case-insensitive).

    Parameters
    ----------
    name
        The backend name, e.g. ``"MPI"``.
    factory
        A callable returning a transport, or ``"package.module:Class"`` imported on first use so that
        optional packages load only when that backend is chosen.
    extra
        The pip extra that provides the backend's package, named in the error when it is missing.
    settings
        The ``ComponentSettings`` model (or ``"module:Model"``) of the YAML keys the transport adds.

    """
    TRANSPORTS.register(name, factory, extra=extra, settings=settings)


def transport_names() -> list[str]:
    """Return the registered transport names."""
    return TRANSPORTS.names()


def create_transport(name: str, **kwargs: Any) -> Transport:
    """Build the transport registered as ``name`` with the given keyword arguments.

    Raises
    ------
    ConfigError
        If no transport has that name; the message lists the valid ones.
    ImportError
        If the transport's optional package is not installed; the message names the extra to install.

    """
    return TRANSPORTS.get(name)(**kwargs)


def require(package: str, extra: str) -> Any:
    """Import and return ``package``, or raise an ImportError saying which extra installs it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(
            f"this backend needs the {package!r} package, which is not installed; "
            f'install it with: pip install -e ".[{extra}]"  (or pip install "fedml[{extra}]")'
        ) from exc


register_transport("LOCAL", "fedml.core.comm.local:LocalTransport")
register_transport("MPI", "fedml.core.comm.mpi:MPITransport", extra="mpi")
register_transport("TRPC", "fedml.core.comm.trpc:TRPCTransport")
register_transport("GRPC", "fedml.core.comm.grpc:GrpcTransport", extra="grpc")
register_transport(
    "MQTT",
    "fedml.core.comm.mqtt:MqttTransport",
    extra="mqtt",
    settings="fedml.cross_device.settings:EdgeSettings",
)
