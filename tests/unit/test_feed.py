"""DetectorFeed: the Detector and a (possibly slow) sink off the event loop."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest

from tests.integration.traffic import recorded
from webhook.core.allowlist import Allowlist
from webhook.core.audit import Event, EventList
from webhook.core.findings import Finding
from webhook.detect.detector import Detector
from webhook.serve import feed as feed_module
from webhook.serve.feed import DetectorFeed

ALLOWLIST = Allowlist.from_yaml('agents: ["kubectl/*", "kubectl-dispatcher/*", "kube-apiserver/*"]')


class SlowSink:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.delivered: list[Finding] = []
        self.closed = False

    def deliver(self, finding: Finding) -> None:
        self.release.wait(30)
        self.delivered.append(finding)

    def close(self) -> None:
        self.closed = True


def all_events() -> list[Event]:
    return [
        event
        for item in recorded()
        if item.route == "/audit"
        for event in msgspec.convert(item.body, EventList).items
    ]


def test_a_stuck_sink_never_blocks_submit_and_overflow_is_counted() -> None:
    events = all_events()
    sink = SlowSink()
    feed = DetectorFeed(Detector(ALLOWLIST), sink, max_events=len(events))
    feed.start()
    started = time.monotonic()
    assert feed.submit(events)  # the detector thread takes them; the first finding blocks in the sink
    assert not feed.submit(events)  # queue (still) full: dropped, counted, not waited for
    assert time.monotonic() - started < 5
    assert feed.stats.dropped == len(events)
    sink.release.set()
    feed.close()
    assert sink.closed and feed.pending == 0
    assert feed.stats.events == len(events)
    assert len(sink.delivered) == feed.stats.findings > 0
    users = {f.user.name for f in sink.delivered}
    assert {"mallory", "system:anonymous"} <= users


def test_a_failing_sink_is_counted_and_the_feed_goes_on() -> None:
    class Broken:
        def deliver(self, finding: Finding) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    feed = DetectorFeed(Detector(ALLOWLIST), Broken())
    feed.start()
    feed.submit(all_events())
    feed.close()
    assert feed.stats.sink_errors == feed.stats.findings > 0


def test_the_queue_is_bounded_by_bytes_as_well_as_events() -> None:
    event = all_events()[0]
    padded = msgspec.structs.replace(event, request_uri="/api/v1/secrets?" + "&" * 1_000_000)  # ~1 MB
    sink = SlowSink()
    feed = DetectorFeed(Detector(ALLOWLIST), sink, max_events=1000, max_bytes=5 * 1024 * 1024)
    # not started: nothing drains, so what is queued stays queued
    assert all(feed.submit([padded]) for _ in range(5))
    assert not feed.submit([padded])  # 6 MB would be over 5 MiB, although 6 events are far under 1000
    assert feed.stats.dropped == 1 and feed.pending == 5
    assert 5_000_000 < feed.pending_bytes <= 5 * 1024 * 1024
    assert feed.submit([event])  # a small event still fits
    sink.release.set()
    feed.start()
    feed.close()
    assert feed.pending == 0 and feed.pending_bytes == 0


def test_a_batch_from_a_body_counts_the_bodys_bytes() -> None:
    """/audit knows the body its events came from: its length bounds their strings."""
    feed = DetectorFeed(Detector(ALLOWLIST), SlowSink(), max_events=1000, max_bytes=5 * 1024 * 1024)
    events = all_events()[:3]
    assert feed.submit(events, 4 * 1024 * 1024)
    assert feed.pending_bytes == 4 * 1024 * 1024 + 3 * 2048
    assert not feed.submit(events, 1024 * 1024)  # over 5 MiB by the body's bytes
    assert feed.stats.dropped == 3 and feed.pending == 3


def test_the_detector_thread_offers_the_gil_to_the_loop_while_it_judges_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It runs off the event loop but shares its GIL: it gives it up every few events, so /validate
    never waits a whole switch interval (5 ms) per I/O while a 400-event batch is judged."""
    offers: list[int] = []
    sink = SlowSink()
    feed = DetectorFeed(Detector(ALLOWLIST), sink)
    monkeypatch.setattr(feed_module, "offer_gil", lambda: offers.append(feed.detector.stats.events))
    events = (all_events() * 400)[:400]
    feed.submit(events)
    sink.release.set()
    feed.start()
    feed.close()
    assert feed.stats.events == 400
    assert len(offers) >= 400 // 32
    assert max(b - a for a, b in zip([0, *offers], [*offers, 400], strict=True)) <= 32
