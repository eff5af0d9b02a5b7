"""The one error hierarchy of fedml: every error the library raises on purpose derives from FedMLError."""

from __future__ import annotations

from typing import Any


class FedMLError(Exception):
    """Base class of all errors raised by fedml."""


class ConfigError(FedMLError):
    """A configuration file, key or value is invalid; the message names the file and the dotted key."""


class DataError(FedMLError):
    """A dataset cannot be loaded or partitioned as configured."""


class TransportError(FedMLError):
    """A communication backend failed to connect, timed out, or broke its protocol."""


class ProtocolError(TransportError):
    """A message on the wire is malformed, truncated, oversized or of an unexpected kind."""


class RoundIncompleteError(TransportError):
    """Too few replies arrived by a stage's deadline; the round may be retried (comm_args.round_retries).

    ``replies`` holds the messages that did arrive and ``updates`` the client updates in them (filled in
    by the backend), so what clients released in a round given up can still be accounted for.
    """

    def __init__(self, message: str, replies: list[Any] | None = None) -> None:
        super().__init__(message)
        self.replies: list[Any] = list(replies or [])
        self.updates: list[Any] = []


class AggregationError(FedMLError):
    """Client updates cannot be aggregated (empty, mismatched, or preconditions not met)."""


class PrivacyError(FedMLError):
    """A requested privacy guarantee cannot be applied; fedml fails closed rather than train without it."""


class SecAggError(PrivacyError):
    """Secure aggregation failed (key agreement, masking, or dropout recovery)."""


class NotSupportedError(FedMLError, NotImplementedError):
    """A valid combination of options that this version of fedml does not implement yet."""
