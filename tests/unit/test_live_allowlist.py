"""LiveAllowlist and FileSource: last good kept, errors reported once, listeners told."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from webhook.core.allowlist import Allowlist, default_allowlist
from webhook.core.live_allowlist import FileSource, LiveAllowlist, ReloadEvent

GOOD = 'agents: ["kubectl/*"]\n'
OTHER = 'agents: ["kubectl/*", "helm/*"]\n'
BROKEN = 'agents: ["kubectl/*"]\nagnets: []\n'


def test_good_text_is_applied_and_reported() -> None:
    live = LiveAllowlist(fallback=default_allowlist())
    seen: list[ReloadEvent] = []
    live.subscribe(seen.append)
    assert live.current() is None and not live.status().loaded
    assert live.current_or_fallback() is default_allowlist()
    event = live.apply_text(GOOD, source="test")
    assert event is not None and event.ok and seen == [event]
    current = live.current()
    assert current is not None and current.hash == Allowlist.from_yaml(GOOD).hash
    status = live.status()
    assert (status.loaded, status.reloads, status.errors, status.last_error) == (True, 1, 0, None)


def test_broken_text_keeps_the_last_good_and_says_why() -> None:
    live = LiveAllowlist()
    live.apply_text(GOOD, source="v1")
    good = live.current()
    event = live.apply_text(BROKEN, source="v2")
    assert event is not None and not event.ok
    assert "unknown key(s) agnets" in event.message
    assert event.message.endswith(f"; keeping allowlist {good.hash if good else ''}")
    assert live.current() is good
    status = live.status()
    assert status.errors == 1 and status.last_error_at is not None
    assert status.last_error is not None and event.message.startswith(status.last_error)


def test_unchanged_text_and_repeated_errors_are_not_reported_again() -> None:
    live = LiveAllowlist()
    seen: list[ReloadEvent] = []
    live.subscribe(seen.append)
    assert live.apply_text(GOOD, source="a") is not None
    assert live.apply_text(GOOD, source="a") is None
    assert live.apply_text(BROKEN, source="a") is not None
    assert live.apply_text(BROKEN, source="a") is None
    assert live.fail("gone", source="a") is not None
    assert live.fail("gone", source="a") is None
    assert live.apply_text(BROKEN, source="a") is not None  # back after a read error: a change
    assert [e.ok for e in seen] == [True, False, False, False]


def test_a_failing_listener_does_not_stop_the_swap() -> None:
    live = LiveAllowlist()

    def broken(_: ReloadEvent) -> None:
        raise RuntimeError("listener bug")

    live.subscribe(broken)
    assert live.apply_text(GOOD, source="a") is not None
    assert live.current() is not None


def test_readers_on_other_threads_always_see_a_whole_allowlist() -> None:
    """Swaps interleaved with broken edits: a reader sees every good version and nothing else.

    The writer waits for two whole reads after each edit (one may have started before it), so
    the check does not depend on how the scheduler happens to interleave the threads.
    """
    live = LiveAllowlist(Allowlist.from_yaml(GOOD))
    good = {Allowlist.from_yaml(GOOD).hash}
    stop = threading.Event()
    seen: set[str] = set()
    reads = [0]
    failure: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                current = live.current()
                assert current is not None
                seen.add(current.hash)
                reads[0] += 1
        except BaseException as error:  # surfaced by the writer below
            failure.append(error)

    def two_more_reads() -> None:
        target = reads[0] + 2
        deadline = time.monotonic() + 10
        while reads[0] < target and not failure:
            assert time.monotonic() < deadline, "the reader stopped reading"
            time.sleep(0.0001)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for number in range(50):
            text = f'agents: ["kubectl/*", "tool-{number}/*"]\n'
            live.apply_text(text, source="loop")
            good.add(Allowlist.from_yaml(text).hash)
            two_more_reads()
            live.apply_text(BROKEN + f"# {number}\n", source="loop")
            two_more_reads()
    finally:
        stop.set()
        reader.join()
    assert not failure, failure
    assert seen == good


def test_file_source_applies_edits_and_survives_breakage(tmp_path: Path) -> None:
    path = tmp_path / "allowlist.yaml"
    path.write_text(GOOD)
    live = LiveAllowlist()
    source = FileSource(live, path)
    first = source.poll()
    assert first is not None and first.ok and first.source == str(path)
    assert source.poll() is None  # unchanged
    path.write_text(BROKEN)
    broken = source.poll()
    assert broken is not None and not broken.ok
    assert live.status().hash == Allowlist.from_yaml(GOOD).hash
    path.write_text(OTHER)
    fixed = source.poll()
    assert fixed is not None and fixed.ok
    assert live.status().hash == Allowlist.from_yaml(OTHER).hash


def test_file_source_reports_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    path = tmp_path / "allowlist.yaml"
    live = LiveAllowlist()
    missing = FileSource(live, path).poll()
    assert missing is not None and not missing.ok and "cannot read" in missing.message
    path.write_bytes(b"agents: ['\xff']\n")
    binary = FileSource(live, path).poll()
    assert binary is not None and not binary.ok and "not UTF-8" in binary.message
    assert not live.status().loaded


def test_file_source_thread_picks_up_a_change(tmp_path: Path) -> None:
    path = tmp_path / "allowlist.yaml"
    path.write_text(GOOD)
    live = LiveAllowlist()
    changed = threading.Event()
    wanted = Allowlist.from_yaml(OTHER).hash

    def on_reload(event: ReloadEvent) -> None:
        if event.allowlist is not None and event.allowlist.hash == wanted:
            changed.set()

    live.subscribe(on_reload)
    source = FileSource(live, path, interval=0.01)
    source.poll()
    source.start()
    try:
        path.write_text(OTHER)
        assert changed.wait(10)
    finally:
        source.stop()
