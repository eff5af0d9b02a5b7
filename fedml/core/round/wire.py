"""What the round's messages carry: assignments, updates, a peer's clients and a run's outcome.

Each ``pack_*`` turns round objects into a ``Message``'s metadata and named tensors; each ``unpack_*``
rebuilds them and raises ``ProtocolError`` for anything incomplete, so a malformed message is one
clear line at the receiver, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fedml.core.algorithms import Update
from fedml.core.comm import Message
from fedml.core.comm.codec import is_int
from fedml.errors import FedMLError, ProtocolError
from fedml.tracking import RunResult


def pack_assignment(
    state: Mapping[str, torch.Tensor], payloads: Mapping[int, Mapping[str, torch.Tensor]]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Turn a worker's round (the global state, its clients and their payloads) into metadata and tensors.

    Tensors are named ``global/<name>`` and ``payload/<client>/<name>``.
    """
    tensors = {f"global/{name}": t for name, t in state.items()}
    for client, payload in payloads.items():
        tensors.update({f"payload/{client}/{name}": t for name, t in payload.items()})
    return {"clients": sorted(payloads)}, tensors


def unpack_assignment(
    message: Message,
) -> tuple[list[int], dict[str, torch.Tensor], dict[int, dict[str, torch.Tensor]]]:
    """Return the clients, the global state and each client's payload of a ``SYNC_MODEL`` message.

    Raises
    ------
    ProtocolError
        If the message does not name its clients as a list of integers.

    """
    clients = message.metadata.get("clients")
    if not isinstance(clients, list) or not all(is_int(c) for c in clients):
        raise ProtocolError(f"{message.describe()} does not name its clients")
    state = {k.removeprefix("global/"): t for k, t in message.tensors.items() if k.startswith("global/")}
    payloads: dict[int, dict[str, torch.Tensor]] = {}
    for client in clients:
        prefix = f"payload/{client}/"
        payloads[client] = {
            k.removeprefix(prefix): t for k, t in message.tensors.items() if k.startswith(prefix)
        }
    return clients, state, payloads


def pack_updates(updates: Sequence[Update]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Turn updates into message metadata and tensors (``"<i>/state/<name>"``, ``"<i>/extra/<name>"``)."""
    metadata = {
        "updates": [
            {
                "client": u.client_idx,
                "weight": u.weight,
                "metrics": u.metrics,
                "names": list(u.state),
                "extras": list(u.extras),
            }
            for u in updates
        ]
    }
    tensors = {f"{i}/state/{name}": t for i, u in enumerate(updates) for name, t in u.state.items()}
    tensors.update({f"{i}/extra/{name}": t for i, u in enumerate(updates) for name, t in u.extras.items()})
    return metadata, tensors


def unpack_updates(message: Message) -> list[Update]:
    """Rebuild the updates of a ``CLIENT_UPDATE`` message, checking that it is complete.

    Raises
    ------
    ProtocolError
        If the metadata or tensors do not describe a list of updates.

    """
    entries = message.metadata.get("updates")
    if not isinstance(entries, list):
        raise ProtocolError(f"{message.describe()} has no list of updates")
    updates = []
    for i, entry in enumerate(entries):
        try:
            state = {name: message.tensors[f"{i}/state/{name}"] for name in entry["names"]}
            extras = {name: message.tensors[f"{i}/extra/{name}"] for name in entry["extras"]}
            updates.append(
                Update(int(entry["client"]), float(entry["weight"]), state, dict(entry["metrics"]), extras)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"{message.describe()}: update {i} is incomplete ({exc!r})") from exc
    return updates


def hosted_clients(message: Message) -> dict[int, int]:
    """Return the clients an ``INIT`` message announces, with their sample counts.

    ``sample_counts`` lists one count per client; ``clients`` names them (default ``0 .. n - 1``, a
    simulation worker that can train every client).

    Raises
    ------
    ProtocolError
        If the lists are missing, of different lengths, or not integers.

    """
    counts = message.metadata.get("sample_counts")
    clients = message.metadata.get("clients", list(range(len(counts)) if isinstance(counts, list) else []))
    if (
        not isinstance(counts, list)
        or not isinstance(clients, list)
        or len(counts) != len(clients)
        or not all(is_int(v) and v >= 0 for v in [*counts, *clients])
    ):
        raise ProtocolError(f"{message.describe()} does not list its clients and their sample counts")
    return dict(zip(clients, counts, strict=True))


def pack_outcome(
    result: RunResult | None, error: BaseException | None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Return the metadata and tensors of a ``FINISH`` message: the run's result, or the error."""
    if result is None:
        return {"error": f"{type(error).__name__}: {error}"}, {}
    metadata = {
        "final_metrics": result.final_metrics,
        "history": result.history,
        "run_dir": str(result.run_dir),
        "engine": result.engine,
        "round_seconds": result.round_seconds,
        "phases": result.phases,
    }
    return metadata, result.model_state


def unpack_outcome(message: Message, sender: str) -> RunResult:
    """Return the ``RunResult`` a ``FINISH`` message carries.

    Raises
    ------
    FedMLError
        If the run failed: the message says why, naming ``sender`` as the one that ended it.

    """
    meta = message.metadata
    if "error" in meta:
        raise FedMLError(f"{sender} ended the run: {meta['error']}")
    return RunResult(
        dict(meta.get("final_metrics", {})),
        list(meta.get("history", [])),
        Path(meta.get("run_dir", ".")),
        message.tensors,
        str(meta.get("engine", "")),
        list(meta.get("round_seconds", [])),
        dict(meta.get("phases", {})),
    )
