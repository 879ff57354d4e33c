"""The opt-in answer cache (``[cache] ttl_s``, off by default).

Holds verified answers for ``ttl_s`` seconds, keyed per merchant, stock, serving route and
request fields (a merchant never sees another merchant's entry). Only two kinds of answer are
kept: a success (``return_code`` and ``result_code`` ``SUCCESS``, no ``err_code``) and a
not-found business error (``err_code`` ``COUPON_STOCK_NOT_FOUND``); everything else — other
business errors, ``return_code=FAIL``, typed errors — always goes upstream.

Entries are stored without ``nonce_str`` and ``sign``: a hit is re-signed with the merchant's
v2 key and a fresh nonce, like every answer the shim gives. The staleness allowed is
``ttl_s``: a cached ``is_send_num`` (coupons sent so far) may lag the upstream's by up to that
long. Bounded: at most ``max_entries`` (least recently used dropped first), and expired
entries are dropped when met.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

__all__ = ["NOT_FOUND", "AnswerCache", "CacheStats", "cacheable"]

NOT_FOUND = "COUPON_STOCK_NOT_FOUND"
_UNSIGNED = ("nonce_str", "sign")


def cacheable(answer: Mapping[str, str]) -> bool:
    """Whether a verified v2 answer may be cached: a success or a not-found answer."""
    if answer.get("return_code") != "SUCCESS":
        return False
    err = answer.get("err_code")
    if answer.get("result_code") == "SUCCESS":
        return not err
    return err == NOT_FOUND


@dataclass
class CacheStats:
    """Running totals: hits, misses, entries stored, entries evicted or expired."""

    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "stored": self.stored,
            "evicted": self.evicted,
        }


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer: the v2 fields without nonce and sign, and what produced them."""

    fields: Mapping[str, str]
    route: str
    unmapped: tuple[str, ...]
    expires: float


class AnswerCache:
    """A bounded LRU of verified answers with a time to live; thread-safe.

    The clock is passed in on every call (the facade's monotonic clock, or a test's).
    """

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> Entry | None:
        """The live entry for ``key``, or None (counted as a hit or a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if now < entry.expires:
                    self._entries.move_to_end(key)
                    self.stats.hits += 1
                    return entry
                del self._entries[key]
                self.stats.evicted += 1
            self.stats.misses += 1
            return None

    def put(
        self,
        key: Hashable,
        answer: Mapping[str, str],
        *,
        route: str,
        unmapped: tuple[str, ...],
        expires: float,
    ) -> bool:
        """Keep ``answer`` until ``expires`` if it is cacheable; returns whether it was kept."""
        if not cacheable(answer):
            return False
        fields = {k: v for k, v in answer.items() if k not in _UNSIGNED}
        with self._lock:
            self._entries[key] = Entry(fields, route, unmapped, expires)
            self._entries.move_to_end(key)
            self.stats.stored += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.stats.evicted += 1
        return True

    def resize(self, max_entries: int) -> None:
        """Follow a reloaded ``[cache] max_entries`` (drops the oldest entries if smaller)."""
        with self._lock:
            self.max_entries = max_entries
            while len(self._entries) > max_entries:
                self._entries.popitem(last=False)
                self.stats.evicted += 1

    def clear(self) -> None:
        """Forget every entry (turning the cache off, or on a reload that changes routes)."""
        with self._lock:
            self.stats.evicted += len(self._entries)
            self._entries.clear()
