"""Audit events in, findings out: pure logic that replay, tail and ``/audit`` share.

- ``detector``: the Detector (windows in event time, snapshot/restore).
- ``config``: the Detector's tuning (windows, caps, thresholds), cheap to import.
- ``rules``: the four rules, their windows, how a window becomes a Finding.
- ``flagged``: what the webhook flagged, remembered per principal (enriches findings).
- ``baseline``: the agent families refused lately (``new-agent-forbidden``), in SQLite.
- ``prefilter``: which raw lines can give a finding, decided on bytes before any parse.
"""

__all__ = ["baseline", "config", "detector", "flagged", "prefilter", "rules"]
