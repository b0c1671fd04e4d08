"""Fleet-wide windows in cluster mode: partial aggregates per partition, merged on read.

A worker sees only the devices of its partitions, so the fleet window (device ``*``) its
processors emit is a partial aggregate. Workers store it under the partition's own key
(``*3`` for partition 3; no device id can start with ``*``) and the api merges the partials of a
window when the fleet is asked for: count, sum, min and max exactly, mean and standard deviation
exactly (Chan et al.), quantiles within the sketch's accuracy (the sketches merge bucket by
bucket). ``first``/``last`` take the earliest/latest event time; on equal event times across
devices the choice is arbitrary, as arrival order across partitions is.

Each partition's watermark follows only its own devices, so a partial window closes (and a
reading counts as late) by its partition's event time, not the fleet's: with devices whose clocks
stay within the out-of-orderness of each other, the merged final windows equal the embedded ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.domain.windows import ALL_DEVICES, WindowAggregate
from fleetstream.ports import WindowQuery


def partial_key(partition: int) -> str:
    """The device id a partition's partial fleet windows are stored under."""
    return f"{ALL_DEVICES}{partition}"


def tag_partials(windows: Iterable[WindowAggregate], partition: int) -> list[WindowAggregate]:
    """The windows, with fleet ones renamed to the partition's partial key."""
    key = partial_key(partition)
    return [dataclasses.replace(w, device_id=key) if w.device_id == ALL_DEVICES else w for w in windows]


def merge_partials(partials: Iterable[WindowAggregate]) -> list[WindowAggregate]:
    """Partial fleet windows merged per (start, sensor), as fleet windows, by start then sensor."""
    merged: dict[tuple[int, str], WindowAggregate] = {}
    for w in partials:
        key = (w.start, w.sensor)
        whole = merged.get(key)
        if whole is None:
            merged[key] = dataclasses.replace(w, device_id=ALL_DEVICES, sketch=w.sketch.copy())
            continue
        whole.merge(dataclasses.replace(w, device_id=ALL_DEVICES))
        whole.version = max(whole.version, w.version)
    return [merged[key] for key in sorted(merged)]


class ClusterPostgresStore(PostgresStore):
    """The PostgreSQL store as the cluster's api reads it: fleet windows merged from partials."""

    async def query_windows(self, query: WindowQuery) -> list[WindowAggregate]:
        if query.device_id != ALL_DEVICES:
            return await super().query_windows(query)
        async with self._reading() as con:
            cur = await con.execute(
                "SELECT DISTINCT device_id FROM windows WHERE size_us = %s AND device_id LIKE %s",
                [query.size_us, f"{ALL_DEVICES}_%"],
            )
            keys = [key for (key,) in await cur.fetchall()]
        partials: list[WindowAggregate] = []
        cutoff: tuple[int, str] | None = None
        for key in keys:
            rows = await super().query_windows(dataclasses.replace(query, device_id=key))
            partials += rows
            if len(rows) >= query.limit:  # this partition has more: merged windows past it are partial
                last = (rows[-1].start, rows[-1].sensor)
                cutoff = last if cutoff is None else min(cutoff, last)
        merged = merge_partials(partials)
        if cutoff is not None:
            merged = [w for w in merged if (w.start, w.sensor) <= cutoff]
        return merged[: query.limit]
