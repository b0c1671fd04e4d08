"""Reading derived state from DuckDB: the checkpoint, twins, windows, device events, late counts.

Functions over a connection (the writer's, or a reader thread's cursor), each
one query over the tables :mod:`~fleetstream.adapters.store.duckdb_derived`
creates.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import duckdb
import msgspec
import pyarrow as pa

from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import WindowAggregate
from fleetstream.ports import Checkpoint, EventQuery, WindowQuery

_decode = msgspec.json.decode


def checkpoint(con: duckdb.DuckDBPyConnection) -> Checkpoint | None:
    """The engine's checkpoint."""
    rows = con.execute(
        "SELECT position, state, epoch_us(written_at) FROM checkpoints WHERE name = 'engine'"
    ).fetchall()
    if not rows:
        return None
    position, state, at = rows[0]
    return Checkpoint(int(position), bytes(state), int(at))


def load_twins(con: duckdb.DuckDBPyConnection, device_ids: Collection[str]) -> list[DeviceTwin]:
    """Stored twins of these devices."""
    if not device_ids:
        return []
    wanted = pa.table({"device_id": pa.array(list(device_ids), pa.string())})
    con.register("wanted_twins", wanted)
    try:
        rows = con.execute(
            "SELECT t.state FROM twins t JOIN wanted_twins w ON t.device_id = w.device_id"
        ).fetchall()
    finally:
        con.unregister("wanted_twins")
    return [DeviceTwin.from_state(_decode(state)) for (state,) in rows]


def list_twins(
    con: duckdb.DuckDBPyConnection, device_type: str | None, status: str | None, limit: int, offset: int
) -> tuple[int, list[DeviceTwin]]:
    """A page of stored twins, by device id, and how many match."""
    where: list[str] = []
    params: list[Any] = []
    if device_type is not None:
        where.append("lower(device_type) = lower(?)")
        params.append(device_type)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = con.execute(f"SELECT count(*) FROM twins {clause}", params).fetchall()[0][0]
    rows = con.execute(
        f"SELECT state FROM twins {clause} ORDER BY device_id LIMIT ? OFFSET ?", [*params, limit, offset]
    ).fetchall()
    return int(total), [DeviceTwin.from_state(_decode(state)) for (state,) in rows]


def query_windows(con: duckdb.DuckDBPyConnection, query: WindowQuery) -> list[WindowAggregate]:
    """Stored windows of one size and device (or the fleet), by start then sensor."""
    where = ["size_us = ?", "device_id = ?", "start >= make_timestamp(?)", "start < make_timestamp(?)"]
    params: list[Any] = [query.size_us, query.device_id, query.start, query.end]
    if query.sensors:
        where.append(f"sensor IN ({', '.join('?' * len(query.sensors))})")
        params.extend(query.sensors)
    rows = con.execute(
        f"SELECT state FROM windows WHERE {' AND '.join(where)} ORDER BY start, sensor LIMIT ?",
        [*params, query.limit],
    ).fetchall()
    return [WindowAggregate.from_state(_decode(state)) for (state,) in rows]


def device_events(con: duckdb.DuckDBPyConnection, query: EventQuery) -> list[DeviceEvent]:
    """One device's events by sequence number."""
    where = ["device_id = ?", "seq > ?"]
    params: list[Any] = [query.device_id, query.after_seq]
    if query.start is not None:
        where.append("ts >= make_timestamp(?)")
        params.append(query.start)
    if query.end is not None:
        where.append("ts < make_timestamp(?)")
        params.append(query.end)
    if query.types:
        where.append(f"type IN ({', '.join('?' * len(query.types))})")
        params.extend(query.types)
    rows = con.execute(
        f"""SELECT device_id, seq, epoch_us(ts), type, payload, position FROM device_events
            WHERE {" AND ".join(where)} ORDER BY seq LIMIT ?""",
        [*params, query.limit],
    ).fetchall()
    return [DeviceEvent(d, int(s), int(t), k, _decode(p), int(pos)) for d, s, t, k, p, pos in rows]


def late_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Late readings per sensor, counted once (for the smallest window size)."""
    rows = con.execute(
        """SELECT sensor, count(*) FROM late_readings
           WHERE size_us = (SELECT min(size_us) FROM late_readings) GROUP BY sensor ORDER BY sensor"""
    ).fetchall()
    return {sensor: int(n) for sensor, n in rows}
