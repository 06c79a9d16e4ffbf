"""A local Event Hubs endpoint for the tests: a stand-in that speaks the real wire protocol.

There is no installable Event Hubs emulator here, so this is a small AMQP 1.0 server that the
real ``azure-eventhub`` client accepts (a connection string with ``UseDevelopmentEmulator=true``
makes the client speak plain AMQP to ``localhost``). Frames are encoded and decoded with the
client's own codec (``azure.eventhub._pyamqp``), so what goes over the socket is what the client
would exchange with Azure: SASL, open/begin/attach/flow/transfer/disposition/detach, the CBS
put-token exchange on ``$cbs``, management READs on ``$management`` (Event Hub and partition
properties), and receiver links on ``HUB/ConsumerGroups/CG/Partitions/N`` that honour the
selector filter (``x-opt-offset`` / ``x-opt-sequence-number``, ``>`` or ``>=``) and deliver
events with the ``x-opt-sequence-number`` / ``x-opt-offset`` / ``x-opt-enqueued-time``
annotations.

It is not Azure: no authorisation (any token is accepted), one consumer group of any name, no
epochs, no retention. Outages are injected (:meth:`EventHubServer.outage`): connections reset as
they come (counted, so a test sees how often the client tries), or receiver links detached with
``com.microsoft:server-busy`` as the service does when it throttles.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from azure.eventhub._pyamqp import performatives as perf
from azure.eventhub._pyamqp._decode import decode_frame, decode_payload
from azure.eventhub._pyamqp._encode import encode_frame, encode_payload
from azure.eventhub._pyamqp.endpoints import Source, Target
from azure.eventhub._pyamqp.error import AMQPError
from azure.eventhub._pyamqp.message import Message, Properties
from azure.eventhub._pyamqp.outcomes import Accepted
from azure.eventhub._pyamqp.types import TYPE, VALUE, AMQPTypes

__all__ = ["EventHubServer"]

_SASL_HEADER = b"AMQP\x03\x01\x00\x00"
_AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
_PARTITION_ADDRESS = re.compile(r"([^/]+)/ConsumerGroups/([^/]+)/Partitions/([^/]+)$")
_SELECTOR = re.compile(r"amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time) (>=?) '(-?\d+)'")
_FRAME_TYPES = {
    0x10: "open",
    0x11: "begin",
    0x12: "attach",
    0x13: "flow",
    0x14: "transfer",
    0x15: "disposition",
    0x16: "detach",
    0x17: "end",
    0x18: "close",
}


@dataclass
class _Event:
    sequence: int
    offset: int
    enqueued_ms: int
    body: bytes


@dataclass
class _Link:
    channel: int
    handle: int
    name: str
    address: str
    server_sends: bool
    partition: str | None = None
    next_sequence: int = 0
    delivery_count: int = 0
    credit: int = 0
    pending_replies: list[Message] = field(default_factory=list)


def _long(value: int) -> dict[str, Any]:
    return {TYPE: AMQPTypes.long, VALUE: value}


def _timestamp(ms: int) -> dict[str, Any]:
    return {TYPE: AMQPTypes.timestamp, VALUE: ms}


class _Closed(Exception):
    pass


class EventHubServer:
    """An Event Hub ``hub`` with ``partitions`` partitions on 127.0.0.1, in threads."""

    def __init__(self, hub: str = "audit", partitions: int = 2) -> None:
        self.hub = hub
        self.partition_ids = [str(i) for i in range(partitions)]
        self._events: dict[str, list[_Event]] = {p: [] for p in self.partition_ids}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self.port = 0
        self.connections = 0
        """How many AMQP connections clients opened (counts reconnects during an outage)."""
        self._outage: str | None = None
        self.resets = 0
        """Connections reset during a ``reset`` outage."""
        self.busy_detaches = 0
        """Receiver links detached during a ``busy`` outage."""
        self.receivers_attached = 0
        self.consumer_groups: set[str] = set()
        self._created_ms = int(time.time() * 1000)

    # -- control ---------------------------------------------------------------------------

    def start(self) -> EventHubServer:
        self._listen()
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._drop_all()
        if self._listener is not None:
            self._listener.close()

    def connection_string(self) -> str:
        """A namespace's connection string (no EntityPath), as its shared access policy gives."""
        return (
            f"Endpoint=sb://127.0.0.1:{self.port};SharedAccessKeyName=test;"
            f"SharedAccessKey=dGVzdA==;UseDevelopmentEmulator=true"
        )

    def append(self, partition: str, body: bytes, enqueued_ms: int | None = None) -> int:
        """Enqueue ``body`` in ``partition``; returns its sequence number."""
        with self._lock:
            events = self._events[partition]
            last = events[-1] if events else None
            sequence = last.sequence + 1 if last else 0
            offset = last.offset + len(last.body) + 100 if last else 0
            when = int(time.time() * 1000) if enqueued_ms is None else enqueued_ms
            events.append(_Event(sequence, offset, when, body))
            return sequence

    def outage(self, kind: str | None) -> None:
        """``"reset"``: every connection is accepted and reset at once (open ones dropped);
        ``"busy"``: receiver links are detached with ``com.microsoft:server-busy``; None: over."""
        self._outage = kind
        if kind == "reset":
            self._drop_all()

    # -- plumbing --------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener

    def _drop_all(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                listener.settimeout(0.1)
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            if self._outage == "reset":
                self.resets += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                continue
            with self._lock:
                self.connections += 1
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            _Connection(self, conn).run()
        except (_Closed, OSError):
            pass
        finally:
            conn.close()

    def events_from(self, partition: str, sequence: int, limit: int) -> list[_Event]:
        with self._lock:
            events = self._events[partition]
            start = next((i for i, e in enumerate(events) if e.sequence >= sequence), len(events))
            return events[start : start + limit]

    def start_sequence(self, partition: str, selector: str | None) -> int:
        """The first sequence number a receiver with this selector filter gets."""
        if not selector:
            return 0
        match = _SELECTOR.search(selector)
        if match is None:
            raise ValueError(f"unsupported selector {selector!r}")
        kind, op, value = match.group(1), match.group(2), int(match.group(3))
        with self._lock:
            events = list(self._events[partition])
        if kind == "sequence-number":
            key = [e.sequence for e in events]
        elif kind == "offset":
            if value == -1:
                return 0
            key = [e.offset for e in events]
        else:
            key = [e.enqueued_ms for e in events]
        for event, k in zip(events, key, strict=True):
            if k > value or (op == ">=" and k == value):
                return event.sequence
        return events[-1].sequence + 1 if events else 0

    def partition_properties(self, partition: str) -> dict[bytes, Any]:
        with self._lock:
            events = self._events[partition]
            last = events[-1] if events else None
        return {
            b"name": self.hub.encode(),
            b"partition": partition.encode(),
            b"begin_sequence_number": _long(0),
            b"last_enqueued_sequence_number": _long(last.sequence if last else -1),
            b"last_enqueued_offset": str(last.offset if last else -1).encode(),
            b"last_enqueued_time_utc": _timestamp(last.enqueued_ms if last else 0),
            b"is_partition_empty": last is None,
        }

    def hub_properties(self) -> dict[bytes, Any]:
        return {
            b"name": self.hub.encode(),
            b"created_at": _timestamp(self._created_ms),
            b"partition_ids": [p.encode() for p in self.partition_ids],
        }


class _Connection:
    """One client connection: a loop that reads frames and pumps deliveries."""

    def __init__(self, server: EventHubServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.buffer = b""
        self.links: dict[tuple[int, int], _Link] = {}
        self.next_delivery: dict[int, int] = {}

    # io
    def _recv_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise _Closed
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, channel: int, frame: Any, frame_type: bytes = b"\x00") -> None:
        header, body = encode_frame(frame, frame_type=frame_type)
        assert body is not None
        self.sock.sendall(header + struct.pack(">H", channel) + body)

    def _read_frame(self) -> tuple[int, int, list[Any]] | None:
        head = self._recv_exact(8)
        size = struct.unpack(">I", head[:4])[0]
        channel = struct.unpack(">H", head[6:8])[0]
        rest = self._recv_exact(size - 8)
        if not rest:
            return None  # heartbeat
        frame_type, fields = decode_frame(memoryview(head[:8] + rest)[8:])
        return channel, frame_type, fields

    # protocol
    def run(self) -> None:
        header = self._recv_exact(8)
        if header == _SASL_HEADER:
            self.sock.sendall(_SASL_HEADER)
            mechanisms = perf.SASLMechanism(sasl_server_mechanisms=[b"MSSBCBS", b"PLAIN", b"ANONYMOUS"])
            self._send(0, mechanisms, b"\x01")
            self._read_frame()  # sasl-init
            self._send(0, perf.SASLOutcome(code=0, additional_data=None), b"\x01")
            header = self._recv_exact(8)
        if header != _AMQP_HEADER:
            raise _Closed
        self.sock.sendall(_AMQP_HEADER)
        while True:
            readable, _, _ = select.select([self.sock], [], [], 0.02)
            if readable or self.buffer:
                frame = self._read_frame()
                if frame is not None:
                    self._handle(*frame)
            self._pump()

    def _handle(self, channel: int, frame_type: int, fields: list[Any]) -> None:
        name = _FRAME_TYPES.get(frame_type)
        if name == "open":
            self._send(
                0,
                perf.OpenFrame(
                    container_id="ua-sentinel-test-eventhub",
                    hostname="127.0.0.1",
                    max_frame_size=65536,
                    channel_max=255,
                    idle_timeout=None,
                    outgoing_locales=None,
                    incoming_locales=None,
                    offered_capabilities=None,
                    desired_capabilities=None,
                    properties=None,
                ),
            )
        elif name == "begin":
            self.next_delivery[channel] = 0
            self._send(
                channel,
                perf.BeginFrame(
                    remote_channel=channel,
                    next_outgoing_id=0,
                    incoming_window=65536,
                    outgoing_window=65536,
                    handle_max=255,
                    offered_capabilities=None,
                    desired_capabilities=None,
                    properties=None,
                ),
            )
        elif name == "attach":
            self._attach(channel, fields)
        elif name == "flow":
            handle = fields[4]
            link = self.links.get((channel, handle)) if handle is not None else None
            if link is not None and link.server_sends:
                link.credit = fields[5] + fields[6] - link.delivery_count
        elif name == "transfer":
            self._transfer(channel, fields)
        elif name == "detach":
            link = self.links.pop((channel, fields[0]), None)
            if link is not None:
                self._send(channel, perf.DetachFrame(handle=fields[0], closed=True, error=None))
        elif name == "end":
            self._send(channel, perf.EndFrame(error=None))
        elif name == "close":
            self._send(0, perf.CloseFrame(error=None))
            raise _Closed

    def _attach(self, channel: int, fields: list[Any]) -> None:
        link_name, handle, role = fields[0], fields[1], fields[2]
        source = Source(*fields[5]) if fields[5] else None
        target = Target(*fields[6]) if fields[6] else None
        server_sends = bool(role)  # the client is the receiver
        address = (source.address if server_sends and source else target.address if target else b"") or b""
        address_text = address.decode() if isinstance(address, bytes) else str(address)
        link = _Link(channel, handle, str(link_name), address_text, server_sends)
        if server_sends and source is not None and source.filters:
            filters = dict(source.filters)
            selector = next(iter(filters.values()), None)
            echoed = {k: (b"apache.org:selector-filter:string", v) for k, v in filters.items()}
            source = source._replace(filters=echoed)
        else:
            selector = None
        match = _PARTITION_ADDRESS.search(address_text)
        if server_sends and match is not None:
            link.partition = match.group(3)
            self.server.consumer_groups.add(match.group(2))
            selector_text = selector.decode() if isinstance(selector, bytes) else selector
            link.next_sequence = self.server.start_sequence(link.partition, selector_text)
            self.server.receivers_attached += 1
        self.links[(channel, handle)] = link
        self._send(
            channel,
            perf.AttachFrame(
                name=link_name,
                handle=handle,
                role=not role,
                send_settle_mode=fields[3],
                rcv_settle_mode=fields[4],
                source=source,
                target=target,
                unsettled=None,
                incomplete_unsettled=False,
                initial_delivery_count=0 if server_sends else None,
                max_message_size=1024 * 1024,
                offered_capabilities=None,
                desired_capabilities=None,
                properties=None,
            ),
        )
        if not server_sends:
            self._send(
                channel,
                perf.FlowFrame(
                    next_incoming_id=0,
                    incoming_window=65536,
                    next_outgoing_id=self.next_delivery[channel],
                    outgoing_window=65536,
                    handle=handle,
                    delivery_count=0,
                    link_credit=1000,
                    available=None,
                    drain=False,
                    echo=False,
                    properties=None,
                ),
            )

    def _transfer(self, channel: int, fields: list[Any]) -> None:
        link = self.links[(channel, fields[0])]
        request = decode_payload(memoryview(fields[-1]))
        if not fields[4]:  # not settled: accept it
            self._send(
                channel,
                perf.DispositionFrame(
                    role=True, first=fields[1], last=fields[1], settled=True, state=Accepted(), batchable=None
                ),
            )
        props = request.application_properties or {}
        status: dict[str, Any] = {"status-code": 200, "status-description": "OK"}
        value: Any = None
        if link.address.endswith("$management"):
            name = props.get(b"name", b"").decode()
            if name != self.server.hub:
                status = {
                    "status-code": 404,
                    "status-description": f"The messaging entity '{name}' could not be found.",
                    "error-condition": "com.microsoft:entity-not-found",
                }
            elif props.get(b"type") == b"com.microsoft:eventhub":
                value = self.server.hub_properties()
            else:
                value = self.server.partition_properties(props[b"partition"].decode())
        reply = Message(
            properties=Properties(correlation_id=request.properties.message_id),
            application_properties=status,
            value=value,
        )
        for other in self.links.values():
            if other.server_sends and other.address == link.address and other.channel == channel:
                other.pending_replies.append(reply)
                break

    def _deliver(self, link: _Link, message: Message) -> None:
        delivery = self.next_delivery[link.channel]
        self.next_delivery[link.channel] = delivery + 1
        payload = encode_payload(bytearray(), message)
        self._send(
            link.channel,
            perf.TransferFrame(
                handle=link.handle,
                delivery_id=delivery,
                delivery_tag=struct.pack(">I", delivery),
                message_format=0,
                settled=True,
                more=False,
                payload=payload,
            ),
        )
        link.delivery_count += 1
        link.credit -= 1

    def _pump(self) -> None:
        for key, link in list(self.links.items()):
            if not link.server_sends:
                continue
            while link.pending_replies and link.credit > 0:
                self._deliver(link, link.pending_replies.pop(0))
            if link.partition is None or link.credit <= 0:
                continue
            if self.server._outage == "busy":
                self.server.busy_detaches += 1
                del self.links[key]
                self._send(
                    link.channel,
                    perf.DetachFrame(
                        handle=link.handle,
                        closed=True,
                        error=AMQPError(
                            condition=b"com.microsoft:server-busy",
                            description=b"The server is busy. Please try again later.",
                        ),
                    ),
                )
                continue
            for event in self.server.events_from(link.partition, link.next_sequence, link.credit):
                self._deliver(
                    link,
                    Message(
                        message_annotations={
                            b"x-opt-sequence-number": _long(event.sequence),
                            b"x-opt-offset": str(event.offset).encode(),
                            b"x-opt-enqueued-time": _timestamp(event.enqueued_ms),
                        },
                        data=[event.body],
                    ),
                )
                link.next_sequence = event.sequence + 1
