"""The ``Transport`` protocol every backend implements, and the registry that builds one by name."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from fedml.core.comm.message import Message
from fedml.errors import ConfigError


@runtime_checkable
class Transport(Protocol):
    """Moves ``Message`` objects between the processes of one run.

    ``rank`` is this process's address; ``world_size`` the number of addresses. ``send`` delivers a
    message to ``message.receiver``; ``receive`` returns the next message addressed here, waiting at most
    ``timeout`` seconds (``None``: the transport's default) and raising ``TransportError`` when none
    arrives. Both raise ``ProtocolError`` for bytes that are not a valid message.
    """

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


@dataclass(frozen=True)
class _Entry:
    module: str
    attribute: str
    extra: str | None


_TRANSPORTS: dict[str, _Entry | Callable[..., Transport]] = {}


def register_transport(name: str, factory: Callable[..., Transport] | str, extra: str | None = None) -> None:
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

    """
    if isinstance(factory, str):
        module, _, attribute = factory.partition(":")
        _TRANSPORTS[name.upper()] = _Entry(module, attribute, extra)
    else:
        _TRANSPORTS[name.upper()] = factory


def transport_names() -> list[str]:
    """Return the registered transport names."""
    return sorted(_TRANSPORTS)


def create_transport(name: str, **kwargs: Any) -> Transport:
    """Build the transport registered as ``name`` with the given keyword arguments.

    Raises
    ------
    ConfigError
        If no transport has that name; the message lists the valid ones.
    ImportError
        If the transport's optional package is not installed; the message names the extra to install.

    """
    entry = _TRANSPORTS.get(name.upper())
    if entry is None:
        raise ConfigError(f"comm_args.backend: no transport {name!r}; valid: {', '.join(transport_names())}")
    if not isinstance(entry, _Entry):
        return entry(**kwargs)
    module = importlib.import_module(entry.module)
    return getattr(module, entry.attribute)(**kwargs)


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
