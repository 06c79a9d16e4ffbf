"""The Detector: audit events in, findings out. No I/O; replay, the tailer and /audit share it.

Rules (see :mod:`webhook.detect.rules`), all in *event* time (``stageTimestamp``) so that replaying a
log and tailing it give the same finding ids:

- **unusual-agent-forbidden**: a ``ResponseComplete`` refused by authorization (decision
  ``forbid``; a 403 ``Forbidden`` when the annotation is missing) whose agent is not listed (a
  missing agent is unlisted). Aggregated per (user, impersonated user, agent, source IP) over
  ``window``: the first refusal is emitted at once (``event.sequence`` 1) and, when more
  followed, the window's totals on close, same ``event.id`` (sequence 2).
- **known-bad-agent**: a request from a ``denied:`` agent that *succeeded* (status < 400),
  aggregated the same way.
- **forbidden-burst**: one (user, impersonated user, agent) refused on at least
  ``burst_threshold`` distinct URIs within ``burst_window`` (enumeration), whatever the verdict.
- **new-agent-forbidden**: with a :class:`~webhook.detect.baseline.Baseline`, a refusal from an agent
  family not refused in the baseline's N days before it.

Findings about a (user, agent) the admission webhook flagged carry ``ua_sentinel.related``
(:mod:`webhook.detect.flagged`); an unlisted agent that both changed objects and was refused is
escalated one severity level. Open windows are bounded; the oldest is closed early (counted).

Event time is kept by the Detector's clock (:attr:`Detector.watermark`): the newest event time,
but never more than ``clock_lead`` ahead of the median of the last few event times, so one event
dated far ahead (forged, or from a broken clock) cannot close everyone's windows at once; a
window opens at its event's time or the clock, whichever is earlier, so such an event's own
window closes like the others. Windows close in order of their start (a heap), not of their
opening. An event the Detector cannot take (a time no datetime holds, or any other failure) is
counted in :attr:`DetectorStats.rejected` and skipped; the others go on.
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Final

from webhook.core.allowlist import Allowlist, Decision
from webhook.core.audit import Event
from webhook.core.findings import Finding
from webhook.detect.baseline import Baseline, family
from webhook.detect.config import CLOCK_SAMPLES, DEFAULT_CONFIG, DetectorConfig
from webhook.detect.flagged import Correlation
from webhook.detect.prefilter import Prefilter
from webhook.detect.rules import (
    FORBIDDEN_BURST,
    KNOWN_BAD_AGENT,
    NEW_AGENT_FORBIDDEN,
    UNUSUAL_AGENT_FORBIDDEN,
    Window,
    audit_fields,
    build_finding,
    finding_id,
)
from webhook.errors import InputError

__all__ = ["Detector", "DetectorStats"]

SNAPSHOT_VERSION = 2


@dataclass(slots=True)
class DetectorStats:
    events: int = 0
    forbidden: int = 0
    findings: int = 0
    windows_evicted: int = 0
    bursts_evicted: int = 0
    known_bad: int = 0
    flagged: int = 0
    new_agents: int = 0
    rejected: int = 0
    """Events the Detector could not take (skipped; the others went on)."""


def _principal(event: Event) -> tuple[str, str | None, str | None]:
    """Who refused requests are folded by: the user, whom it impersonated, and its agent."""
    effective = event.impersonated_user
    return event.user.username, effective.username if effective else None, event.user_agent


class _Rejected(InputError):
    """An event the Detector cannot take; its message says why."""


_SAFE_EPOCHS: Final = (0.0, 253402214400.0)
"""Epochs from 1970 to 9999-12-31 00:00 UTC: every datetime holds them (no check needed)."""


def _timestamp(event: Event) -> tuple[str, float | None]:
    """The event's time as text and epoch seconds (None: no parseable time, judged all the same).

    A time that parses but that no datetime can hold in UTC (year 0 or 10000 after the offset)
    rejects the event: its day and its finding's ``@timestamp`` cannot be computed.
    """
    text = event.stage_timestamp or event.request_received_timestamp
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return text, None
    try:
        epoch = parsed.timestamp()
        if not _SAFE_EPOCHS[0] <= epoch < _SAFE_EPOCHS[1]:
            dt.datetime.fromtimestamp(epoch, dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise _Rejected(f"timestamp out of range: {text[:64]!r}") from None
    return text, epoch


def _target(event: Event) -> str:
    path = event.request_uri.split("?", 1)[0]
    return path or event.resource_label


class _Windows:
    """Open windows by key, closed in order of their start: a heap beside the dict (every window
    leaves through :meth:`pop`, so the heap holds exactly the open ones)."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[Any, ...], Window] = {}
        self._heap: list[tuple[float, int, tuple[Any, ...]]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, key: tuple[Any, ...]) -> Window | None:
        return self.by_key.get(key)

    def add(self, key: tuple[Any, ...], window: Window) -> None:
        self.by_key[key] = window
        heapq.heappush(self._heap, (window.start_epoch, next(self._order), key))

    def oldest_start(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def pop(self) -> Window:
        """Remove and return the window that started first."""
        _, _, key = heapq.heappop(self._heap)
        return self.by_key.pop(key)

    def clear(self) -> None:
        self.by_key.clear()
        self._heap.clear()

    def values(self) -> Iterator[Window]:
        return iter(self.by_key.values())


class Detector:
    """Turns audit events into findings. Not thread-safe: feed it from one task or thread."""

    def __init__(
        self,
        allowlist: Allowlist | Callable[[], Allowlist],
        *,
        config: DetectorConfig = DEFAULT_CONFIG,
        baseline: Baseline | None = None,
    ) -> None:
        self._allowlist = allowlist if callable(allowlist) else (lambda: allowlist)
        self.config = config
        self.baseline = baseline
        self.stats = DetectorStats()
        self.correlation = Correlation(
            max_principals=config.max_related, ttl=config.related_ttl.total_seconds()
        )
        self._windows = _Windows()
        self._bursts = _Windows()
        self._watermark: float = float("-inf")
        self._recent: deque[float] = deque(maxlen=CLOCK_SAMPLES)
        self.last_rejection: str | None = None
        """Why the last :meth:`process` call rejected its event (None: it did not)."""
        self._pruned: float = float("-inf")
        self._prefilter: tuple[str, Prefilter] | None = None
        self._spans = (
            (self._windows, config.window.total_seconds()),
            (self._bursts, config.burst_window.total_seconds()),
        )
        self._clock_lead = config.clock_lead.total_seconds()
        self._second: tuple[str, int] = ("", 0)
        """The last whole second :meth:`_time` parsed, as text (19 characters) and epoch."""
        self._due = float("-inf")
        """No window closes and no pruning is due before this clock (:meth:`close_expired` sets
        it, opening a window lowers it): most events then skip the call."""
        self._day: tuple[float, dt.date] = (float("nan"), dt.date.min)
        """The last UTC day computed, by its epoch-day number (most events share one day)."""

    @property
    def open_windows(self) -> int:
        """Aggregation windows of unusual-agent-forbidden and known-bad-agent findings."""
        return len(self._windows)

    @property
    def watermark(self) -> float | None:
        """The clock (epoch seconds): the newest event time, at most ``clock_lead`` ahead of the
        median of the last :data:`CLOCK_SAMPLES` event times; None before the first event."""
        return self._watermark if self._watermark != float("-inf") else None

    @property
    def prefilter(self) -> Prefilter:
        """The raw-line pre-filter for the current allowlist (a superset for every rule)."""
        allowlist = self._allowlist()
        if self._prefilter is None or self._prefilter[0] != allowlist.hash:
            self._prefilter = (allowlist.hash, Prefilter(allowlist if self.config.known_bad else None))
        return self._prefilter[1]

    def _advance(self, epoch: float) -> None:
        """Move the clock to ``epoch``, but never past the recent median plus ``clock_lead``."""
        recent = self._recent
        recent.append(epoch)
        if epoch <= self._watermark:
            return  # the step would be at most epoch: no move
        ordered = sorted(recent)
        bound = ordered[(len(ordered) - 1) // 2] + self._clock_lead
        step = min(epoch, bound)
        if step > self._watermark:
            self._watermark = step

    def process(self, event: Event) -> list[Finding]:
        """Findings caused by ``event``: new ones, and totals of windows it closed.

        Never raises for an event: one it cannot take is counted in ``stats.rejected``, its
        reason kept in :attr:`last_rejection`, and the findings of windows it closed still
        returned.
        """
        self.stats.events += 1
        self.last_rejection = None
        out: list[Finding] = []
        try:
            self._process(event, out)
        except Exception as exc:  # one event must never stop the others
            self.stats.rejected += 1
            reason = str(exc) if isinstance(exc, _Rejected) else f"{type(exc).__name__}: {exc}"
            self.last_rejection = reason[:200]
        return out

    def _time(self, event: Event) -> tuple[str, float | None]:
        """:func:`_timestamp`, with the apiserver's own form (``2026-11-27T00:00:00.001526Z``)
        read from the last whole second parsed: the same float (timestamp() divides the same
        integer microseconds), a third of the cost."""
        text = event.stage_timestamp or event.request_received_timestamp
        if len(text) == 27 and text[26] == "Z" and text[19] == ".":
            micros = text[20:26]
            second, base = self._second
            if text[:19] == second and micros.isdigit() and micros.isascii():
                return text, (base * 1_000_000 + int(micros)) / 1_000_000
            text, epoch = _timestamp(event)
            if epoch is not None and _SAFE_EPOCHS[0] <= epoch < _SAFE_EPOCHS[1]:
                whole = dt.datetime.fromisoformat(text[:19] + "+00:00").timestamp()
                self._second = (text[:19], int(whole))
            return text, epoch
        return _timestamp(event)

    def _process(self, event: Event, out: list[Finding]) -> None:
        text, epoch = self._time(event)
        if epoch is not None:
            self._advance(epoch)
        if self._due <= self._watermark:
            out.extend(self.close_expired(self._watermark))
        if event.stage != "ResponseComplete":
            return
        if self.correlation.observe(event, text, epoch):
            self.stats.flagged += 1
        forbidden = event.forbidden_by_authorization
        allowlist = self._allowlist()
        if not forbidden:
            # A success matters only as known-bad-agent: no verdict needed unless it may be denied.
            code = event.code or 0
            if not 100 <= code < 400 or not self.config.known_bad:
                return
            if not allowlist.may_deny(event.user_agent):
                return
        day = self._utc_day(epoch) if epoch is not None else None
        decision = allowlist.decide(
            event.user_agent,
            user=event.user.username,
            groups=event.user.groups,
            namespace=event.namespace,
            today=day,
        )
        if not forbidden:
            if decision.verdict == "denied" and self.config.known_bad:
                self.stats.known_bad += 1
                out.extend(self._fold(KNOWN_BAD_AGENT, event, decision, allowlist.hash, text, epoch))
            return
        self.stats.forbidden += 1
        if decision.verdict != "listed":
            out.extend(self._fold(UNUSUAL_AGENT_FORBIDDEN, event, decision, allowlist.hash, text, epoch))
        out.extend(self._burst(event, decision, allowlist.hash, text, epoch))
        if self.baseline is not None and epoch is not None:
            out.extend(self._new_agent(event, decision, allowlist.hash, text, epoch))

    def _utc_day(self, epoch: float) -> dt.date:
        number = epoch // 86400
        if number != self._day[0]:
            self._day = (number, dt.datetime.fromtimestamp(epoch, dt.UTC).date())
        return self._day[1]

    def _open(
        self,
        rule: str,
        key: tuple[Any, ...],
        event: Event,
        decision: Decision,
        allowlist_hash: str,
        text: str,
        epoch: float | None,
    ) -> Window:
        effective = event.impersonated_user
        return Window(
            rule=rule,
            key=list(key),
            finding_id=finding_id(rule, key, event.audit_id),
            verdict=decision.verdict,
            entry=decision.entry,
            reason=decision.reason,
            allowlist_hash=allowlist_hash,
            username=event.user.username,
            uid=event.user.uid,
            groups=list(event.user.groups),
            effective_user=effective.username if effective else None,
            effective_uid=effective.uid if effective else "",
            agent=event.user_agent,
            source_ip=event.source_ip,
            first_audit=audit_fields(event),
            start=text,
            end=text,
            start_epoch=min(epoch, self._watermark) if epoch is not None else self._watermark,
        )

    def _make_room(self, table: _Windows, cap: int, out: list[Finding]) -> bool:
        """Close the oldest window of a full ``table`` into ``out``; True when one was evicted."""
        if len(table) < cap:
            return False
        out.extend(self._close(table.pop()))
        return True

    def _fold(
        self,
        rule: str,
        event: Event,
        decision: Decision,
        allowlist_hash: str,
        text: str,
        epoch: float | None,
    ) -> list[Finding]:
        out: list[Finding] = []
        key = (rule, *_principal(event), event.source_ip)
        window = self._windows.get(key)
        if window is None:
            if self._make_room(self._windows, self.config.max_windows, out):
                self.stats.windows_evicted += 1
            window = self._open(rule, key, event, decision, allowlist_hash, text, epoch)
            self._windows.add(key, window)
            self._due = min(self._due, window.start_epoch + self._spans[0][1])
        self._add(window, event, text)
        if window.emitted == 0:
            window.emitted = window.count
            out.append(self._finding(window, sequence=1))
        return out

    def _burst(
        self, event: Event, decision: Decision, allowlist_hash: str, text: str, epoch: float | None
    ) -> list[Finding]:
        out: list[Finding] = []
        key = (FORBIDDEN_BURST, *_principal(event))
        window = self._bursts.get(key)
        if window is None:
            if self._make_room(self._bursts, self.config.max_bursts, out):
                self.stats.bursts_evicted += 1
            window = self._open(FORBIDDEN_BURST, key, event, decision, allowlist_hash, text, epoch)
            window.fired = False
            window.extra = {
                "burst": {
                    "threshold": self.config.burst_threshold,
                    "window_seconds": self.config.burst_window.total_seconds(),
                }
            }
            self._bursts.add(key, window)
            self._due = min(self._due, window.start_epoch + self._spans[1][1])
        self._add(window, event, text)
        target = _target(event)
        if target not in window.targets:
            if len(window.targets) < max(self.config.burst_threshold, self.config.max_distinct):
                window.targets.append(target)
            else:
                window.truncated = True
        if not window.fired and len(window.targets) >= self.config.burst_threshold:
            window.fired = True
            window.emitted = window.count
            out.append(self._finding(window, sequence=1))
        return out

    def _new_agent(
        self, event: Event, decision: Decision, allowlist_hash: str, text: str, epoch: float
    ) -> list[Finding]:
        assert self.baseline is not None
        fam = family(event.user_agent)
        new = not self.baseline.seen_before(fam, epoch)
        self.baseline.record(fam, epoch)
        if not new:
            return []
        self.stats.new_agents += 1
        window = self._open(NEW_AGENT_FORBIDDEN, (fam,), event, decision, allowlist_hash, text, epoch)
        window.extra = {"baseline": {"family": fam, "days": self.baseline.days}}
        self._add(window, event, text)
        window.emitted = window.count
        return [self._finding(window, sequence=1)]

    def _add(self, window: Window, event: Event, text: str) -> None:
        window.count += 1
        window.end = text or window.end
        limit = self.config.max_distinct
        for values, value in ((window.verbs, event.verb), (window.resources, event.resource_label)):
            if value not in values:
                if len(values) < limit:
                    values.append(value)
                else:
                    window.truncated = True
        if len(window.audit_ids) < self.config.max_audit_ids:
            window.audit_ids.append(event.audit_id)
        else:
            window.truncated = True

    def close_expired(self, now: float) -> list[Finding]:
        """Close windows opened more than their span before ``now`` (epoch seconds)."""
        out: list[Finding] = []
        due: float = float("inf")
        for windows, span in self._spans:
            while (start := windows.oldest_start()) is not None and start + span <= now:
                out.extend(self._close(windows.pop()))
            if start is not None:
                due = min(due, start + span)
        if now - self._pruned > 60:
            self.correlation.prune(now)
            self._pruned = now
        self._due = min(due, self._pruned + 60)
        return out

    def flush(self) -> list[Finding]:
        """Close every open window (end of a replay, or shutdown)."""
        out: list[Finding] = []
        for windows in (self._windows, self._bursts):
            while windows:
                out.extend(self._close(windows.pop()))
        return out

    def _close(self, window: Window) -> list[Finding]:
        if not window.fired:
            return []
        related = self.correlation.related(window.username, window.agent, self._watermark)
        grew = related is not None and related.count > window.related_emitted
        if window.count <= window.emitted and not grew:
            return []
        window.emitted = window.count
        return [self._finding(window, sequence=2)]

    def _finding(self, window: Window, *, sequence: int) -> Finding:
        self.stats.findings += 1
        related = self.correlation.related(window.username, window.agent, self._watermark)
        if related is not None:
            window.related_emitted = related.count
        return build_finding(window, sequence=sequence, related=related)

    def snapshot(self) -> dict[str, Any]:
        """Open windows, burst trackers, correlation memory and the watermark, JSON-able."""
        return {
            "version": SNAPSHOT_VERSION,
            "watermark": self.watermark,
            "windows": [asdict(w) for w in self._windows.values()],
            "bursts": [asdict(w) for w in self._bursts.values()],
            "correlation": self.correlation.snapshot(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Reload what :meth:`snapshot` returned (replaces any open windows)."""
        self._windows.clear()
        self._bursts.clear()
        watermark = state.get("watermark")
        self._watermark = float(watermark) if watermark is not None else float("-inf")
        self._recent.clear()
        if watermark is not None:
            self._recent.append(self._watermark)  # an outlier right after a restart is outvoted too
        for target, items in (
            (self._windows, state.get("windows", [])),
            (self._bursts, state.get("bursts", [])),
        ):
            for raw in items:
                fields = dict(raw)
                if "key" not in fields:  # version 1: unusual-agent-forbidden windows only
                    fields["key"] = [
                        fields["rule"],
                        fields["username"],
                        fields["effective_user"],
                        fields["agent"],
                        fields["source_ip"],
                    ]
                window = Window(**fields)
                target.add(tuple(window.key), window)
        self.correlation.restore(state.get("correlation", []))
        self._due = float("-inf")
