"""Memo: least recently used entries kept within an entry bound and a byte bound."""

from __future__ import annotations

from webhook.core.cache import Memo


def _sized(key: str, _value: str) -> int:
    return len(key)


def test_entries_over_the_byte_bound_evict_the_least_recently_used() -> None:
    calls: list[str] = []
    memo = Memo(lambda k: (calls.append(k), k.upper())[1], max_entries=100, max_bytes=10, cost=_sized)
    assert memo("aaaa") == "AAAA" and memo("bbbb") == "BBBB"
    memo("aaaa")  # used again: bbbb is now the oldest
    memo("cccc")  # 12 bytes > 10: bbbb goes
    assert memo.stats().bytes == 8 and memo.stats().entries == 2 and memo.stats().evictions == 1
    memo("aaaa")
    memo("bbbb")
    assert calls == ["aaaa", "bbbb", "cccc", "bbbb"]


def test_an_entry_larger_than_the_bound_is_computed_but_not_kept() -> None:
    memo = Memo(str.upper, max_entries=100, max_bytes=10, cost=_sized)
    assert memo("x" * 11) == "X" * 11
    assert memo.stats().entries == 0 and memo.stats().bytes == 0


def test_the_entry_bound_holds_too() -> None:
    memo = Memo(str.upper, max_entries=2, max_bytes=1000, cost=_sized)
    for key in ("a", "b", "c"):
        memo(key)
    assert len(memo) == 2 and memo.stats().bytes == 2
