"""Dedup of a batch: the dedup memory first, then the store for keys older than its horizon.

One function for the embedded engine (:mod:`fleetstream.engine.pipeline`) and the cluster's
workers, whose batches already carry their log positions.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Protocol

from fleetstream.domain.batch import Batch
from fleetstream.domain.dedup import Deduplicator
from fleetstream.domain.records import DedupKey


class KeyStore(Protocol):
    """The one store query dedup needs."""

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]: ...


async def deduplicate(dedup: Deduplicator, store: KeyStore, batch: Batch) -> tuple[Batch, Sequence[DedupKey]]:
    """The rows and events of ``batch`` not seen before, and the keys this added to ``dedup``."""
    keys = batch.dedup_keys()
    ts: list[int] = batch.ts
    if batch.events:
        keys += [e.dedup_key for e in batch.events]
        ts = ts + [e.ts for e in batch.events]
    fresh, unknown = dedup.classify(keys, ts)
    if fresh is None:
        return batch, keys
    remembered = [keys[i] for i in fresh]
    kept = fresh
    if unknown:
        try:
            older = {keys[i]: (keys[i], ts[i]) for i in unknown}  # also drops repeats inside the batch
            stored = await store.stored_keys(list(older.values()))
        except Exception:
            dedup.forget(remembered)
            raise
        dedup.duplicates_total += len(unknown) - len(older) + len(stored)
        for i in unknown:
            key = keys[i]
            if key not in stored and older.pop(key, None) is not None:
                kept.append(i)
        kept.sort()
    rows = len(batch)
    cut = bisect_left(kept, rows)  # indexes below ``rows`` are rows, the others events
    out = batch.take(kept[:cut])
    events = [j - rows for j in kept[cut:]]
    out.events = [batch.events[j] for j in events]
    out.event_msg = [batch.event_msg[j] for j in events]
    out.messages_count = len(set(out.msg)) + len(out.events)
    return out, remembered
