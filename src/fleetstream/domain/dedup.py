"""Drop re-sent readings: at-least-once delivery + this = each reading counted once."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

Key = Hashable


class Deduplicator:
    """Remembers the keys of recent readings, within a horizon of event time.

    The horizon trails the newest event time seen. A key whose event time is
    inside the horizon is answered from memory; one older than the horizon
    cannot be, and :meth:`classify` hands it back as *unknown* so the caller can
    ask the durable store. Memory is bounded by the keys inside the horizon.

    Example:
        >>> d = Deduplicator(horizon_us=10)
        >>> d.classify([(("a", "t", 100), 100), (("a", "t", 100), 100), (("a", "t", 101), 101)])
        ([0, 2], [])
        >>> d.classify([(("a", "t", 100), 100), (("a", "t", 50), 50)])
        ([], [1])
    """

    def __init__(self, horizon_us: int, bucket_us: int | None = None) -> None:
        self.horizon_us = horizon_us
        self._bucket_us = bucket_us or max(1, horizon_us // 8)
        self._keys: dict[Key, int] = {}
        self._buckets: dict[int, list[Key]] = {}
        self.newest_ts: int | None = None
        self.duplicates_total = 0

    @property
    def floor(self) -> int | None:
        """Event time below which a key is no longer remembered."""
        return None if self.newest_ts is None else self.newest_ts - self.horizon_us

    def __len__(self) -> int:
        return len(self._keys)

    def classify(self, items: Iterable[tuple[Key, int]]) -> tuple[list[int], list[int]]:
        """Split ``(key, ts)`` items into fresh ones (now remembered) and ones below the horizon.

        Duplicates, within the items or of anything remembered, are in neither
        list. Returns the indexes of fresh items and of unknown (too old) items.
        """
        fresh: list[int] = []
        unknown: list[int] = []
        keys, buckets, size = self._keys, self._buckets, self._bucket_us
        floor = self.floor
        newest = self.newest_ts
        for i, (key, ts) in enumerate(items):
            if key in keys:
                self.duplicates_total += 1
                continue
            if floor is not None and ts < floor:
                unknown.append(i)
                continue
            bucket = ts // size
            keys[key] = bucket
            members = buckets.get(bucket)
            if members is None:
                buckets[bucket] = [key]
            else:
                members.append(key)
            fresh.append(i)
            if newest is None or ts > newest:
                newest = ts
        if newest is not None and newest != self.newest_ts:
            self.newest_ts = newest
            self._evict()
        return fresh, unknown

    def forget(self, keys: Iterable[Key]) -> None:
        """Drop keys that were classified fresh but never stored (their write failed)."""
        for key in keys:
            self._keys.pop(key, None)

    def remember(self, items: Iterable[tuple[Key, int]]) -> None:
        """Add keys known to be stored (a restart rebuilding its memory), without counting."""
        self.classify(items)

    def _evict(self) -> None:
        floor = self.floor
        assert floor is not None
        limit = floor // self._bucket_us
        stale = [b for b in self._buckets if b < limit]
        keys = self._keys
        for bucket in stale:
            for key in self._buckets.pop(bucket):
                if keys.get(key) == bucket:
                    del keys[key]
