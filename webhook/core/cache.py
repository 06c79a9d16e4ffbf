"""Memoized one-argument functions whose cache is bounded by bytes as well as by entries.

The keys of our caches are attacker text (user agents). ``functools.lru_cache`` counts entries
only: 4,096 forged 2 MiB agents would hold 8 GiB for good. :class:`Memo` keeps the least
recently used entries within both bounds and keeps its own byte count (``bytes``), which the
metrics read, so a flood is seen rather than guessed from RSS.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

__all__ = ["DEFAULT_MAX_BYTES", "CacheStats", "Memo", "text_cost"]

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024
"""Per cache: 8 MiB holds 4,096 agents of 2 KiB, twice the longest one the apiserver writes."""

_K = TypeVar("_K")
_V = TypeVar("_V")


def text_cost(key: str, _value: object = None) -> int:
    """Bytes a cached text costs: the key's own size, counted twice for what is derived from it
    (a parse holds slices of its agent; a display holds its escaped form)."""
    return 2 * sys.getsizeof(key)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A cache's state for metrics: entries, bytes held, entries evicted."""

    entries: int
    bytes: int
    evictions: int


class Memo(Generic[_K, _V]):
    """``function`` memoized in an LRU cache of at most ``max_entries`` and ``max_bytes``.

    ``cost(key, value)`` estimates an entry's bytes; an entry costing more than ``max_bytes``
    is computed and not kept. Thread-safe (admission runs on the loop, the Detector on a thread).
    """

    def __init__(
        self,
        function: Callable[[_K], _V],
        *,
        max_entries: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
        cost: Callable[[_K, _V], int],
    ) -> None:
        self.function = function
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.cost = cost
        self.bytes = 0
        self.evictions = 0
        self._entries: OrderedDict[_K, tuple[_V, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, key: _K) -> _V:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        value = self.function(key)
        size = self.cost(key, value)
        if size > self.max_bytes:
            return value
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._entries[key] = (value, size)
            self.bytes += size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped
                self.evictions += 1
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(entries=len(self._entries), bytes=self.bytes, evictions=self.evictions)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
