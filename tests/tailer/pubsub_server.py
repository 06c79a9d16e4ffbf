"""A local Pub/Sub endpoint for the tests: a STAND-IN, not Google's emulator, that speaks the real
wire protocol.

No official Pub/Sub emulator installs from the registries the tests reach (Google's ships with
the gcloud SDK and a JRE), so this is a gRPC server registering the ``google.pubsub.v1.Publisher``
and ``google.pubsub.v1.Subscriber`` services under their real method paths, with the
request/response (de)serializers of google-cloud-pubsub's own generated types
(``PullRequest.deserialize``, ``PullResponse.serialize``, ...). The real client library reaches
it through ``PUBSUB_EMULATOR_HOST``, as it reaches Google's emulator: what crosses the socket is
exactly what crosses it to ``pubsub.googleapis.com`` (less TLS and credentials).

Semantics kept from Pub/Sub (https://cloud.google.com/pubsub/docs/lease-management,
https://cloud.google.com/pubsub/docs/reference/rpc/google.pubsub.v1):
- a published message goes to every subscription of its topic, with one ``message_id``;
- ``Pull`` leases up to ``max_messages`` available messages for the subscription's ack deadline
  (10-600 s) and waits for one when none is available, answering empty before its deadline;
- an unacknowledged message becomes available again when its lease runs out, with a new
  ``ack_id`` (the old one no longer acknowledges it) and ``delivery_attempt`` + 1;
- ``ModifyAckDeadline`` (0-600 s) moves a current lease; ``Acknowledge`` with a current ack id
  removes the message; stale or unknown ack ids are ignored (no exactly-once delivery).
- ``StreamingPull`` and the admin methods the tests do not use answer UNIMPLEMENTED.

Test controls, not Pub/Sub's: :meth:`outage` makes every call answer a status (UNAVAILABLE,
RESOURCE_EXHAUSTED) and counts them, :meth:`go_away` / :meth:`come_back` close and reopen the
port, :attr:`on_acknowledge` runs before an Acknowledge is applied (to crash the reader between
its checkpoint and its ack), :meth:`expire_leases` ends every lease now (what waiting out the
deadline would do), :attr:`latency` slows every Pull, and messages are offered oldest first.
"""

from __future__ import annotations

import datetime as dt
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2
from google.pubsub_v1 import types

Handler = Callable[[Any, grpc.ServicerContext], Any]


@dataclass
class _Message:
    seq: int
    id: str
    data: bytes
    published: dt.datetime
    ack_id: str = ""
    deadline: float = 0.0
    """Monotonic time its lease ends (0: never leased)."""
    attempts: int = 0


@dataclass
class _Subscription:
    name: str
    topic: str
    ack_deadline: int
    messages: dict[str, _Message] = field(default_factory=dict)
    by_ack: dict[str, str] = field(default_factory=dict)


class PubSubStandIn:
    """Topics and subscriptions in memory behind a gRPC server on 127.0.0.1 (see the module)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.topics: dict[str, list[str]] = {}
        self.subscriptions: dict[str, _Subscription] = {}
        self.calls: Counter[str] = Counter()
        self.deliveries: Counter[str] = Counter()
        """Per message id: how many times a Pull handed it out."""
        self.pull_waits: list[tuple[float, float | None]] = []
        """Per Pull: when it came (monotonic) and the time its caller gave it (its deadline)."""
        self.first_lease = 0.0
        """Monotonic time the first message was handed out."""
        self.refused = 0
        self.failing: grpc.StatusCode | None = None
        self.latency = 0.0
        """Seconds a Pull takes before it looks for messages (a real service's round trip)."""
        self.on_acknowledge: Callable[[list[str]], bool] | None = None
        """Runs before an Acknowledge is applied; True: it is lost (answered UNAVAILABLE)."""
        self._ids = itertools.count(4_096_000_000_000_001)
        self._acks = itertools.count(1)
        self._closed = False
        self._handlers = (
            self._service(
                "google.pubsub.v1.Publisher",
                {
                    "CreateTopic": (self._create_topic, types.Topic, types.Topic),
                    "Publish": (self._publish, types.PublishRequest, types.PublishResponse),
                },
            ),
            self._service(
                "google.pubsub.v1.Subscriber",
                {
                    "CreateSubscription": (
                        self._create_subscription,
                        types.Subscription,
                        types.Subscription,
                    ),
                    "Pull": (self._pull, types.PullRequest, types.PullResponse),
                    "Acknowledge": (self._acknowledge, types.AcknowledgeRequest, None),
                    "ModifyAckDeadline": (self._modify, types.ModifyAckDeadlineRequest, None),
                },
            ),
        )
        self.port = 0
        self.server = self._serve()
        self.host = f"127.0.0.1:{self.port}"

    def _serve(self) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        server.add_generic_rpc_handlers(self._handlers)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        return server

    def _service(self, name: str, methods: dict[str, tuple[Handler, Any, Any]]) -> grpc.GenericRpcHandler:
        handlers = {}
        for method, (function, request, response) in methods.items():
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._guard(method, function),
                request_deserializer=request.deserialize,
                response_serializer=(
                    response.serialize if response is not None else empty_pb2.Empty.SerializeToString
                ),
            )
        return grpc.method_handlers_generic_handler(name, handlers)

    def _guard(self, method: str, function: Handler) -> Handler:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            with self.lock:
                self.calls[method] += 1
                failing = self.failing
                if failing is not None:
                    self.refused += 1
            if failing is not None:
                context.abort(failing, f"injected {failing.name}")
            return function(request, context)

        return handle

    # -- test controls ------------------------------------------------------------------------
    def outage(self, code: grpc.StatusCode | None) -> None:
        """Every call answers ``code`` from now on (None: the service answers again)."""
        with self.lock:
            self.failing = code

    def go_away(self) -> None:
        """The endpoint goes away: connections are refused (the messages stay)."""
        self.server.stop(grace=None).wait()

    def come_back(self) -> None:
        """Serve again on the same port."""
        self.server = self._serve()

    def expire_leases(self) -> None:
        """End every lease now, as waiting out the ack deadline would."""
        with self.lock:
            for sub in self.subscriptions.values():
                for message in sub.messages.values():
                    if message.deadline:
                        message.deadline = time.monotonic()
            self.lock.notify_all()

    def unacked(self, subscription: str) -> int:
        with self.lock:
            return len(self.subscriptions[subscription].messages)

    def create(self, topic: str, subscription: str, ack_deadline: int = 10) -> None:
        """A topic and a subscription to it (what ``gcloud pubsub ... create`` does)."""
        with self.lock:
            self.topics.setdefault(topic, [])
            self.topics[topic].append(subscription)
            self.subscriptions[subscription] = _Subscription(subscription, topic, ack_deadline)

    def publish(self, topic: str, datas: list[bytes]) -> list[str]:
        with self.lock:
            ids = []
            now = dt.datetime.now(dt.UTC)
            for data in datas:
                seq = next(self._ids)
                ids.append(str(seq))
                for name in self.topics[topic]:
                    sub = self.subscriptions[name]
                    sub.messages[str(seq)] = _Message(seq, str(seq), data, now)
            self.lock.notify_all()
            return ids

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self.lock.notify_all()
        self.server.stop(grace=None)

    # -- the services -------------------------------------------------------------------------
    def _create_topic(self, request: types.Topic, context: grpc.ServicerContext) -> types.Topic:
        with self.lock:
            if request.name in self.topics:
                context.abort(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            self.topics[request.name] = []
        return request

    def _publish(self, request: types.PublishRequest, context: grpc.ServicerContext) -> types.PublishResponse:
        if request.topic not in self.topics:
            context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
        ids = self.publish(request.topic, [bytes(m.data) for m in request.messages])
        return types.PublishResponse(message_ids=ids)

    def _create_subscription(
        self, request: types.Subscription, context: grpc.ServicerContext
    ) -> types.Subscription:
        deadline = request.ack_deadline_seconds or 10
        if not 10 <= deadline <= 600:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ack_deadline_seconds must be 10-600")
        if request.topic not in self.topics:
            context.abort(grpc.StatusCode.NOT_FOUND, "Topic not found")
        self.create(request.topic, request.name, deadline)
        return types.Subscription(name=request.name, topic=request.topic, ack_deadline_seconds=deadline)

    def _subscription(self, name: str, context: grpc.ServicerContext) -> _Subscription:
        sub = self.subscriptions.get(name)
        if sub is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={name}).")
        assert sub is not None
        return sub

    def _wake(self) -> None:
        with self.lock:
            self.lock.notify_all()

    def _available(self, sub: _Subscription, now: float, limit: int) -> list[_Message]:
        ready = [m for m in sub.messages.values() if m.deadline <= now]
        ready.sort(key=lambda m: m.seq)
        return ready[:limit]

    def _pull(self, request: types.PullRequest, context: grpc.ServicerContext) -> types.PullResponse:
        if request.max_messages <= 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "max_messages must be positive")
        remaining = context.time_remaining()
        with self.lock:
            self.pull_waits.append((time.monotonic(), remaining))
        give_up = time.monotonic() + min(remaining - 0.2 if remaining is not None else 10.0, 10.0)
        context.add_callback(self._wake)  # a reader gone (killed) must not be handed messages
        time.sleep(self.latency)
        with self.lock:
            sub = self._subscription(request.subscription, context)
            while True:
                now = time.monotonic()
                if not context.is_active():
                    return types.PullResponse()
                ready = self._available(sub, now, request.max_messages)
                if ready or request.return_immediately or now >= give_up or self._closed:
                    break
                leased = [m.deadline for m in sub.messages.values() if m.deadline > now]
                self.lock.wait(min([give_up, *leased]) - now)
            received = []
            for message in ready:
                sub.by_ack.pop(message.ack_id, None)
                message.attempts += 1
                self.deliveries[message.id] += 1
                self.first_lease = self.first_lease or now
                message.ack_id = f"{request.subscription}:{message.id}:{message.attempts}:{next(self._acks)}"
                message.deadline = now + sub.ack_deadline
                sub.by_ack[message.ack_id] = message.id
                received.append(
                    types.ReceivedMessage(
                        ack_id=message.ack_id,
                        message=types.PubsubMessage(
                            data=message.data, message_id=message.id, publish_time=message.published
                        ),
                        delivery_attempt=message.attempts,
                    )
                )
        return types.PullResponse(received_messages=received)

    def _acknowledge(self, request: types.AcknowledgeRequest, context: grpc.ServicerContext) -> Any:
        hook = self.on_acknowledge
        if hook is not None and hook(list(request.ack_ids)):
            context.abort(grpc.StatusCode.UNAVAILABLE, "the acknowledgement was lost")
        with self.lock:
            sub = self._subscription(request.subscription, context)
            for ack_id in request.ack_ids:
                message_id = sub.by_ack.pop(ack_id, None)
                if message_id is not None:
                    sub.messages.pop(message_id, None)
        return empty_pb2.Empty()

    def _modify(self, request: types.ModifyAckDeadlineRequest, context: grpc.ServicerContext) -> Any:
        if not 0 <= request.ack_deadline_seconds <= 600:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ack_deadline_seconds must be 0-600")
        with self.lock:
            sub = self._subscription(request.subscription, context)
            now = time.monotonic()
            for ack_id in request.ack_ids:
                message_id = sub.by_ack.get(ack_id)
                if message_id is not None:
                    sub.messages[message_id].deadline = now + request.ack_deadline_seconds
            self.lock.notify_all()
        return empty_pb2.Empty()
