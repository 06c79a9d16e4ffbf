"""The queue follower's bounds and redelivery handling, with the real client library over gRPC to
the local Pub/Sub stand-in (in this process)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from webhook.inputs.pubsub import PubSubSource
from webhook.tail import queues
from webhook.tail.queues import QueueFollower

from .gke_entries import recorded_entries
from .pubsub_server import PubSubStandIn

TOPIC = "projects/ua-sentinel-test/topics/t"
SUBSCRIPTION = "projects/ua-sentinel-test/subscriptions/s"


@pytest.fixture
def follower(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[PubSubStandIn, QueueFollower]]:
    server = PubSubStandIn()
    server.create(TOPIC, SUBSCRIPTION)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", server.host)
    reader = QueueFollower([PubSubSource(SUBSCRIPTION)], poll_interval=0.01, page_limit=10, wait=0.5)
    yield server, reader
    reader.close()
    server.close()


def _ids(lines: list[bytes]) -> list[str]:
    return [json.loads(line)["auditID"] for line in lines]


def test_held_messages_are_bounded_and_pulling_waits_for_the_checkpoint(
    follower: tuple[PubSubStandIn, QueueFollower], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, reader = follower
    monkeypatch.setattr(queues, "MAX_HELD", 15)
    server.publish(TOPIC, recorded_entries()[:40])
    assert len(reader.read().lines) == 10
    assert len(reader.read().lines) == 5  # only the room left
    pulls = server.calls["Pull"]
    assert not reader.read().lines and server.calls["Pull"] == pulls  # full: no call at all
    assert server.unacked(SUBSCRIPTION) == 40  # nothing acknowledged before a checkpoint
    reader.committed()
    assert len(reader.read().lines) == 10  # acknowledged the 15, then pulled again
    assert server.unacked(SUBSCRIPTION) == 25


def test_a_message_redelivered_while_held_is_read_once_and_acknowledged_by_its_new_ack_id(
    follower: tuple[PubSubStandIn, QueueFollower],
) -> None:
    server, reader = follower
    entries = recorded_entries()[:10]
    server.publish(TOPIC, entries)
    first = _ids(reader.read().lines)
    server.expire_leases()  # the deadline passed while they waited for the checkpoint
    assert not reader.read().lines  # all ten came again: none read twice
    assert reader.redelivered[f"pubsub:{SUBSCRIPTION}"] == 10
    assert set(server.deliveries.values()) == {2}
    reader.committed()
    reader.read()
    assert server.unacked(SUBSCRIPTION) == 0  # the old ack ids would not have removed them
    assert len(first) == 10


def test_remembered_ids_are_bounded_by_count_and_bytes(
    follower: tuple[PubSubStandIn, QueueFollower], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, reader = follower
    monkeypatch.setattr(queues, "MAX_REMEMBERED", 12)
    server.publish(TOPIC, recorded_entries()[:30])
    for _ in range(3):
        reader.read()
        reader.committed()
    reader.read()  # acknowledges the last page
    counted = reader.positions()[f"pubsub:{SUBSCRIPTION}"]["counted"]
    assert len(counted) == 12 and server.unacked(SUBSCRIPTION) == 0
    monkeypatch.setattr(queues, "MAX_REMEMBERED_BYTES", 16 * 5)  # the ids are 16 characters
    reader.restore({f"pubsub:{SUBSCRIPTION}": {"counted": [str(n).zfill(16) for n in range(10)]}})
    assert len(reader.positions()[f"pubsub:{SUBSCRIPTION}"]["counted"]) == 5


def test_messages_published_by_the_library_are_read_with_their_ids(
    follower: tuple[PubSubStandIn, QueueFollower],
) -> None:
    """The stand-in's Publisher service, reached by google-cloud-pubsub's own PublisherClient."""
    from google.cloud import pubsub_v1

    server, reader = follower
    publisher = pubsub_v1.PublisherClient()
    entries = recorded_entries()[:3]
    ids = [publisher.publish(TOPIC, entry).result(timeout=30) for entry in entries]
    publisher.stop()
    batch = reader.read()
    assert _ids(batch.lines) == [
        json.loads(entry).get("insertId") or json.loads(entry)["operation"]["id"] for entry in entries
    ]
    assert sorted(server.deliveries) == sorted(ids)
