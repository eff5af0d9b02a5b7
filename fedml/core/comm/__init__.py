"""The communication layer: one ``Message`` type, one codec, and transports behind one protocol.

Examples
--------
>>> from fedml.core.comm import LocalHub, Message, MessageKind
>>> hub = LocalHub(2)
>>> hub.endpoint(0).send(Message(MessageKind.INIT, sender="0", receiver="1"))
>>> hub.endpoint(1).receive(timeout=1).kind.name
'INIT'

"""

from fedml.core.comm.base import (
    ClosingContext,
    Transport,
    create_transport,
    register_transport,
    transport_names,
)
from fedml.core.comm.codec import DEFAULT_MAX_BYTES, decode, encode
from fedml.core.comm.local import LocalHub, LocalTransport
from fedml.core.comm.message import BROADCAST, PROTOCOL_VERSION, Message, MessageKind, rank_of

__all__ = [
    "BROADCAST",
    "DEFAULT_MAX_BYTES",
    "PROTOCOL_VERSION",
    "ClosingContext",
    "LocalHub",
    "LocalTransport",
    "Message",
    "MessageKind",
    "Transport",
    "create_transport",
    "decode",
    "encode",
    "rank_of",
    "register_transport",
    "transport_names",
]
