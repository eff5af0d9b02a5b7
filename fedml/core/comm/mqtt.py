"""MQTT transport (paho-mqtt): the server and its silos exchange messages through a broker.

Both ends are clients of one broker (Mosquitto, see ``fedml.core.comm.broker``), authenticated by
username and password, over TLS unless ``comm_args.insecure``. Topics are namespaced by run id:

- ``fedml/{run}/to/{peer}``: what the server sends ``peer``; each peer subscribes to its own.
- ``fedml/{run}/from/{peer}``: what ``peer`` sends the server; the server takes the topic, not the
  frame, as the sender, so a broker ACL that lets each device's credentials write only its own
  topic (``fedml.core.comm.broker.fedml_acl``) binds every update to the device that sent it.
- ``fedml/{run}/will/{peer}``: a client end's last will, which the broker publishes when the silo
  vanishes (about 1.5 x ``heartbeat`` without a ping, at once when its socket closes); the server
  turns it into an ``ERROR`` message from that peer.
- ``fedml/{run}/hello``: the server end announces each (re)connection; client ends then re-send
  their ``INIT``, so a restarted server, or one started after its silos, learns its peers.

A message travels as QoS 1 publishes of one chunk each (``fedml.core.comm.chunks``), framed by
``fedml.core.comm.mqtt_frames``. The server end authenticates every frame (run id, protocol version,
token) before anything reaches the round; a refused peer is told why and its next call raises.
Sessions are clean: what is published to a peer while it is disconnected is lost, and the round's
deadlines take care of it.
"""

from __future__ import annotations

import logging
import math
import queue
import secrets
import ssl
import threading
import time
from typing import Any

from fedml.core.comm.base import ClosingContext, require
from fedml.core.comm.chunks import Reassembler, decode_chunk, encode_chunk, split
from fedml.core.comm.codec import decode, encode_parts
from fedml.core.comm.message import MAX_PEER_ID, Message, MessageKind
from fedml.core.comm.mqtt_frames import Frame, FrameKind, pack_frame, parse_frame, refusal_reason
from fedml.core.comm.mqtt_frames import topic_name_problem as name_problem
from fedml.core.comm.network import DEFAULT_PORTS, NetworkSettings, resolve_tls
from fedml.errors import ConfigError, ProtocolError, TransportError
from fedml.tracking import role_logger

require("paho.mqtt", "mqtt")

import paho.mqtt.client as mqtt  # noqa: E402

SERVER = "0"
"""The server end's peer id."""
QOS = 1


def topic(run_id: str, *levels: str) -> str:
    """Return the topic ``fedml/{run_id}/{levels...}``."""
    return "/".join(("fedml", run_id, *levels))


class MqttTransport(ClosingContext):
    """One end of a run over an MQTT broker: the server (``server=True``) or a silo.

    Parameters
    ----------
    settings
        The broker's address and credentials, the run id, token, TLS files and limits.
    address
        This end's peer id; the server end is ``"0"``.
    server
        Whether this is the server end (it authenticates peers and watches their wills).
    log
        Where warnings go; by default ``[FedML-Server(0)]`` / ``[FedML-Client(rank)]`` lines.

    Attributes
    ----------
    address, rank, world_size
        This end's peer id, its rank (the id when decimal, else 0) and 0 (the world is open).
    port, broker
        The broker's port and ``host:port``.
    inbox
        The topic this end subscribes to.
    tls
        The TLS files in use, ``None`` for plaintext.

    Raises
    ------
    TransportError
        If the broker cannot be reached or refuses the connection within ``settings.connect_timeout``.
    ConfigError
        For TLS settings that ``resolve_tls`` refuses, or a run id unusable in a topic.

    """

    def __init__(
        self,
        settings: NetworkSettings,
        address: str = SERVER,
        server: bool = True,
        log: logging.LoggerAdapter[Any] | logging.Logger | None = None,
    ) -> None:
        problem = name_problem(address, MAX_PEER_ID)
        if problem:
            raise TransportError(f"peer id {address!r:.40} {problem}")
        problem = name_problem(settings.run_id)
        if problem:
            raise ConfigError(f"comm_args.run_id {settings.run_id!r:.40} {problem}")
        self.settings = settings
        self.address = address
        self.rank = int(address) if address.isascii() and address.isdecimal() else 0
        self.world_size = 0
        self.server = server
        self.log = log or role_logger("Server" if server else "Client", self.rank)
        tls = self.tls = resolve_tls(settings, server=False)
        self.port = settings.port or DEFAULT_PORTS["MQTT" if tls is not None else "MQTT-plain"]
        self.broker = f"{settings.host}:{self.port}"
        self.inbox = topic(settings.run_id, "to", address)
        self._updates_prefix = topic(settings.run_id, "from", "")
        self._will_prefix = topic(settings.run_id, "will", "")
        self._hello = topic(settings.run_id, "hello")
        self._queue: queue.Queue[Message | TransportError] = queue.Queue()
        self._joiner = Reassembler(settings.max_bytes)
        self._warned: set[tuple[str, str]] = set()
        self._refused: str | None = None
        self._last_init: Message | None = None
        self._closed = False
        self._ever_ready = False
        self._connack = threading.Event()
        self._connect_error: str | None = None
        self._ready = threading.Event()
        self._disconnected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"fedml-{settings.run_id}-{address}-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.username_pw_set(settings.username, settings.password)
        if tls is not None:
            self.client.tls_set(
                ca_certs=str(tls.ca) if tls.ca else None,
                certfile=str(tls.cert) if tls.cert else None,
                keyfile=str(tls.key) if tls.key else None,
            )
        if not server:
            will = pack_frame(FrameKind.WILL, address, settings.run_id, settings.auth_token)
            self.client.will_set(topic(settings.run_id, "will", address), will, qos=QOS)
        self.client.reconnect_delay_set(1, max(2, math.ceil(settings.heartbeat)))
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        try:
            self._connect()
        except BaseException:
            self.close()
            raise

    def send(self, message: Message) -> None:
        """Publish ``message`` to the inbox of ``message.receiver``; waits until the broker has it.

        Raises
        ------
        TransportError
            If this end was refused, is closed, is not connected within ``connect_timeout``, the
            broker does not acknowledge within ``timeout``, or a client end sends to a peer other
            than the server.

        """
        self._check_usable()
        if message.sender != self.address:
            raise TransportError(f"peer {self.address} cannot send a message from {message.sender!r:.40}")
        if not self.server and message.receiver != SERVER:
            raise TransportError(
                f"a client end sends to the server ({SERVER!r}) only, not {message.receiver!r:.40}"
            )
        problem = name_problem(message.receiver, MAX_PEER_ID)
        if problem:
            raise TransportError(f"receiver {message.receiver!r:.40} {problem}")
        if not self._ready.wait(self.settings.connect_timeout):
            raise TransportError(
                f"peer {self.address}: not connected to the MQTT broker {self.broker} within "
                f"{self.settings.connect_timeout} s; {message.describe()} was not sent"
            )
        if message.kind == MessageKind.INIT and not self.server:
            self._last_init = message
        infos = self._publish(message)
        deadline = time.monotonic() + self.settings.timeout
        for info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
                published = info.is_published()
            except (RuntimeError, ValueError) as exc:
                raise TransportError(
                    f"peer {self.address}: {message.describe()} was not sent: {exc}"
                ) from exc
            if not published:
                raise TransportError(
                    f"peer {self.address}: the MQTT broker {self.broker} did not acknowledge "
                    f"{message.describe()} within {self.settings.timeout} s"
                )
        self._check_usable()

    def receive(self, timeout: float | None = None) -> Message:
        """Return the next message for this end, waiting at most ``timeout`` seconds.

        Raises
        ------
        ProtocolError
            For a malformed or refused frame that arrived in its place (the transport keeps running).
        TransportError
            If no message arrives in time, the server refused this peer, or the transport is closed.

        """
        self._check_usable()
        wait = self.settings.timeout if timeout is None else timeout
        try:
            item = self._queue.get(timeout=max(0.0, wait))
        except queue.Empty:
            raise TransportError(f"peer {self.address}: no message within {wait} s") from None
        if isinstance(item, TransportError):
            raise item
        return item

    def close(self) -> None:
        """Disconnect cleanly (the broker then drops the last will) and stop the network thread."""
        if self._closed:
            return
        self._closed = True
        connected = self._ready.is_set()
        # Also ends a pending reconnect wait, so stopping the loop below returns at once.
        self.client.disconnect()
        if connected:
            self._disconnected.wait(min(5.0, self.settings.connect_timeout))
        self.client.loop_stop()

    def _check_usable(self) -> None:
        if self._closed:
            raise TransportError(f"peer {self.address}: the transport is closed")
        if self._refused is not None:
            raise TransportError(f"the server refused peer {self.address}: {self._refused}")

    def _connect(self) -> None:
        settings = self.settings
        deadline = time.monotonic() + settings.connect_timeout
        keepalive = max(1, math.ceil(settings.heartbeat))
        self.client.connect_timeout = max(0.1, min(5.0, settings.connect_timeout))
        while True:
            try:
                self.client.connect(settings.host, self.port, keepalive)
                break
            except ssl.SSLError as exc:
                raise TransportError(f"TLS with the MQTT broker {self.broker} failed: {exc}") from exc
            except ConnectionResetError as exc:
                if self.tls is None:
                    raise TransportError(f"the MQTT broker {self.broker} reset the connection") from exc
                raise TransportError(
                    f"TLS with the MQTT broker {self.broker} failed: it reset the connection (a plaintext "
                    "listener does this; comm_args.insecure: true to connect without TLS)"
                ) from exc
            except OSError as exc:
                if time.monotonic() + 0.5 > deadline:
                    raise TransportError(
                        f"cannot connect to the MQTT broker {self.broker} within "
                        f"{settings.connect_timeout} s (comm_args.join_timeout): {exc}"
                    ) from exc
                time.sleep(0.5)
        # The first connection is served here, so a refusal ends the attempt without paho's
        # background thread retrying it; that thread takes over once subscribed.
        while not self._ready.is_set():
            if self._connect_error is not None:
                raise TransportError(
                    f"the MQTT broker {self.broker} refused the connection: {self._connect_error}"
                )
            if time.monotonic() > deadline:
                raise TransportError(
                    f"the MQTT broker {self.broker} did not accept the connection and subscriptions within "
                    f"{settings.connect_timeout} s"
                )
            self.client.loop(timeout=0.05)
        self.client.loop_start()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            if self._connack.is_set():
                self.log.warning("The MQTT broker %s refused to reconnect: %s", self.broker, reason)
            else:
                self._connect_error = f"{reason} (reason code {reason.value})"
                self._connack.set()
            return
        self._connack.set()
        self._disconnected.clear()
        if self.server:
            topics = [(self._updates_prefix + "+", QOS), (self._will_prefix + "+", QOS)]
        else:
            topics = [(self.inbox, QOS), (self._hello, QOS)]
        client.subscribe(topics)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        failed = ", ".join(str(reason) for reason in reasons if reason.is_failure)
        if failed:
            if not self._ever_ready:
                self._connect_error = f"it refused the subscriptions ({failed})"
            self.log.warning("The MQTT broker %s refused a subscription: %s", self.broker, failed)
            return
        again, self._ever_ready = self._ever_ready, True
        self._ready.set()
        if self.server:
            client.publish(
                self._hello, pack_frame(FrameKind.HELLO, self.address, self.settings.run_id), qos=QOS
            )
        elif again:
            self._resend_init()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._ready.clear()
        self._disconnected.set()
        if not self._connack.is_set():
            # A TLS 1.3 listener that requires a client certificate closes the connection this way.
            self._connect_error = f"it closed the connection before answering ({reason})"
            self._connack.set()
        if self._ever_ready and not self._closed:
            self.log.warning(
                "Lost the connection to the MQTT broker %s (%s); reconnecting", self.broker, reason
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Runs on paho's network thread: an exception here would end it, so every failure is queued.
        try:
            self._dispatch(message.topic, message.payload)
        except ProtocolError as exc:
            self._queue.put(ProtocolError(f"on {message.topic}: {exc}"))
        except Exception as exc:
            self.log.exception("Could not handle a publish on %s", message.topic)
            self._queue.put(ProtocolError(f"on {message.topic}: could not be handled ({exc})"))

    def _dispatch(self, where: str, payload: bytes | bytearray) -> None:
        frame = parse_frame(payload)
        run_id = self.settings.run_id
        from_peer = self.server and where.startswith(self._updates_prefix)
        if from_peer and where[len(self._updates_prefix) :] != frame.sender:
            # The broker's ACL lets a peer write only its own topic: that, not the frame, says who sent it.
            raise ProtocolError(f"a frame claims the sender {frame.sender!r:.40}")
        if (from_peer or (not self.server and where == self.inbox)) and frame.kind == FrameKind.DATA:
            reason = refusal_reason(frame, run_id, self.settings.auth_token)
            if reason is None:
                self._take_chunk(frame)
            elif self.server:
                self._refuse(frame.sender, reason)
            else:
                raise ProtocolError(f"refused a frame from {frame.sender}: {reason}")
        elif where == self.inbox and frame.kind == FrameKind.REFUSAL and not self.server:
            if frame.sender != SERVER or frame.run_id != run_id:
                raise ProtocolError(f"a refusal from {frame.sender!r:.40} of run {frame.run_id!r:.40}")
            self._refused = bytes(frame.body).decode("utf-8", errors="replace")
            self._queue.put(TransportError(f"the server refused peer {self.address}: {self._refused}"))
        elif self.server and where.startswith(self._will_prefix) and frame.kind == FrameKind.WILL:
            self._take_will(where[len(self._will_prefix) :], frame)
        elif not self.server and where == self._hello and frame.kind == FrameKind.HELLO:
            if frame.run_id != run_id:
                raise ProtocolError(f"a server announcement of run {frame.run_id!r:.40}")
            self._resend_init()
        else:
            raise ProtocolError(f"unexpected {frame.kind.name} frame from {frame.sender}")

    def _take_chunk(self, frame: Frame) -> None:
        data = self._joiner.add(frame.sender, decode_chunk(frame.body))
        if data is None:
            return
        message = decode(data, self.settings.max_bytes, copy=False)
        if message.sender != frame.sender:
            raise ProtocolError(
                f"a message from peer {frame.sender} claims the sender {message.sender!r:.40}"
            )
        self._queue.put(message)

    def _take_will(self, peer: str, frame: Frame) -> None:
        if peer != frame.sender:
            raise ProtocolError(f"the will of peer {peer!r:.40} names the sender {frame.sender}")
        reason = refusal_reason(frame, self.settings.run_id, self.settings.auth_token)
        if reason is not None:
            self._warn_once(peer, f"ignored its last will: {reason}")
            return
        self._joiner.forget(peer)
        error = "connection to the broker lost (the broker published its last will)"
        self._queue.put(Message(MessageKind.ERROR, peer, self.address, -1, {"error": error}))

    def _refuse(self, peer: str, reason: str) -> None:
        self._warn_once(peer, reason)
        refusal = pack_frame(
            FrameKind.REFUSAL, self.address, self.settings.run_id, body=reason.encode("utf-8")
        )
        self.client.publish(topic(self.settings.run_id, "to", peer), refusal, qos=QOS)

    def _warn_once(self, peer: str, reason: str) -> None:
        if (peer, reason) not in self._warned:
            self._warned.add((peer, reason))
            self.log.warning("Refused peer %s: %s", peer, reason)

    def _resend_init(self) -> None:
        if self._last_init is not None and self._refused is None:
            self._publish(self._last_init)

    def _publish(self, message: Message) -> list[mqtt.MQTTMessageInfo]:
        parts, total = encode_parts(message)
        if total > self.settings.max_bytes:
            raise TransportError(
                f"{message.describe()} is {total} bytes, over the limit of "
                f"{self.settings.max_bytes} bytes (comm_args.max_message_mb)"
            )
        # A peer writes only to its own update topic, so a broker ACL can bind topics to credentials.
        target = (
            topic(self.settings.run_id, "to", message.receiver)
            if self.server
            else self._updates_prefix + self.address
        )
        run_id, token = self.settings.run_id, self.settings.auth_token
        return [
            self.client.publish(
                target,
                pack_frame(FrameKind.DATA, self.address, run_id, token, encode_chunk(chunk), message.version),
                qos=QOS,
            )
            for chunk in split(parts, self.settings.chunk_bytes)
        ]
