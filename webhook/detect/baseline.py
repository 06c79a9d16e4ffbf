"""The agent baseline behind ``new-agent-forbidden``: which agent families were refused lately.

Like Elastic's current *Kubernetes Forbidden Request from Unusual User Agent* (a ``new_terms``
rule over ``user_agent.original`` with a 7-day history window), a refusal is unusual when its
agent was not refused in the N days before it, whether or not the allowlist lists it. We
compare *families* (product name + major version: ``kubectl/1``, ``python-requests/2``) so a
kubectl upgrade is not news; an agent with control/bidi characters or no product is its own
family (``exact:`` + escaped agent), so a spoof never hides behind kubectl.

Storage is an embedded SQLite file (``<state>/baseline.sqlite``): per family and UTC day, the
earliest and latest refusal time seen. "Seen in [t - N days, t)" is then a range query, exact
except at the window's oldest day (day granularity). Questions are answered in *event* time
and a repeat of the same event gives the same answer, so a tailer restarted from an older
checkpoint re-derives the same findings. Writes are buffered and committed by :meth:`flush`;
days older than the window are pruned then. The tailer saves the buffered sightings
(:meth:`pending`) in its checkpoint and commits them after it, and :meth:`merge` puts them back
on a restart: the baseline on disk is then never ahead of the checkpoint. (Ahead, it would hold
sightings from lines the restart reads again, and an older refusal logged after a newer one
would hide the newer one's finding, which was never delivered.)
"""

from __future__ import annotations

import os
import sqlite3
from collections import OrderedDict

from webhook.core import useragent

__all__ = ["Baseline", "family"]

DAY = 86_400.0
_MAX_FAMILY = 96
_CACHE = 4096


def family(agent: str | None) -> str:
    """``kubectl/v1.32.4 (linux/amd64) kubernetes/4cb5f07`` → ``kubectl/1``."""
    if not agent:
        return "(none)"
    parsed = useragent.parse(agent)
    primary = parsed.primary
    if (
        primary is None
        or not parsed.well_formed
        or useragent.has_unsafe_chars(agent)
        or len(primary.name) > _MAX_FAMILY
    ):
        return "exact:" + useragent.display(agent, _MAX_FAMILY)
    name = primary.name.lower()
    version = useragent.version_tuple(primary.version or "")
    return f"{name}/{version[0]}" if version else name


class Baseline:
    """Families refused per day, in SQLite. Not thread-safe (the Detector's thread owns it)."""

    def __init__(self, path: str | os.PathLike[str] | None, *, days: int = 7) -> None:
        self.days = days
        self._db = sqlite3.connect(":memory:" if path is None else os.fspath(path), isolation_level=None)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sightings ("
            " family TEXT NOT NULL, day INTEGER NOT NULL, first REAL NOT NULL, last REAL NOT NULL,"
            " PRIMARY KEY (family, day))"
        )
        self._rows: OrderedDict[str, dict[int, list[float]]] = OrderedDict()
        self._dirty: set[tuple[str, int]] = set()
        self.newest = 0.0

    def _load(self, fam: str) -> dict[int, list[float]]:
        rows = self._rows.get(fam)
        if rows is not None:
            self._rows.move_to_end(fam)
            return rows
        rows = {
            int(day): [float(first), float(last)]
            for day, first, last in self._db.execute(
                "SELECT day, first, last FROM sightings WHERE family = ?", (fam,)
            )
        }
        self._rows[fam] = rows
        while len(self._rows) > _CACHE:
            old, _ = next(iter(self._rows.items()))
            if any(key[0] == old for key in self._dirty):
                break
            self._rows.popitem(last=False)
        return rows

    def seen_before(self, fam: str, when: float) -> bool:
        """Was ``fam`` refused in ``[when - days, when)``?"""
        since = when - self.days * DAY
        # ``first`` and ``last`` are real sightings, and a window spans at least a day, so this
        # is exact: a row with first < when and last >= since holds a sighting in the range.
        return any(first < when and last >= since for first, last in self._load(fam).values())

    def record(self, fam: str, when: float) -> None:
        day = int(when // DAY)
        rows = self._load(fam)
        row = rows.get(day)
        if row is None:
            rows[day] = [when, when]
        elif when < row[0] or when > row[1]:
            row[0], row[1] = min(row[0], when), max(row[1], when)
        else:
            return
        self._dirty.add((fam, day))
        self.newest = max(self.newest, when)

    def pending(self) -> list[tuple[str, int, float, float]]:
        """Sightings recorded since the last :meth:`flush`: ``(family, day, first, last)``."""
        rows = []
        for fam, day in self._dirty:
            row = self._rows.get(fam, {}).get(day)
            if row is not None:
                rows.append((fam, day, row[0], row[1]))
        return rows

    def merge(self, rows: list[tuple[str, int, float, float]]) -> None:
        """Record :meth:`pending` rows saved elsewhere (idempotent: first and last only widen)."""
        for fam, _day, first, last in rows:
            self.record(fam, first)
            self.record(fam, last)

    def flush(self) -> None:
        """Commit buffered sightings (one transaction) and prune days past the window."""
        if not self._dirty:
            return
        rows = self.pending()
        cutoff = int(self.newest // DAY) - self.days - 1
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO sightings (family, day, first, last) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (family, day) DO UPDATE SET"
                " first = min(first, excluded.first), last = max(last, excluded.last)",
                rows,
            )
            self._db.execute("DELETE FROM sightings WHERE day < ?", (cutoff,))
        self._dirty.clear()
        for fam_rows in self._rows.values():
            for day in [d for d in fam_rows if d < cutoff]:
                del fam_rows[day]

    def close(self) -> None:
        self.flush()
        self._db.close()
