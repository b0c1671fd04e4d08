"""The PostgreSQL tables of derived state: windows, late readings, device events, twins, checkpoints.

Functions over the writer or a reader connection of
:class:`~fleetstream.adapters.store.postgres.PostgresStore`. Every write is idempotent, because a
replay after a crash writes again what the processors emitted after the last checkpoint; here the
natural keys are primary keys, so each write is one binary COPY into a temporary table and one
``INSERT ... ON CONFLICT`` from it:

- a window replaces the row of its key (size, device, start, sensor): one row per window;
- a late reading (log position, window size) and a device event (device, sequence number) are
  added only when not stored yet;
- a twin and the checkpoint replace their row;
- an alert replaces the row of its id, keeping an acknowledgement stored since
  (:mod:`~fleetstream.adapters.store.postgres_alerts`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from fleetstream.adapters.store.postgres_alerts import write_alerts
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import WindowAggregate
from fleetstream.ports import Checkpoint, Derived, EventQuery, WindowQuery

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import Connection

DDL = """
CREATE TABLE IF NOT EXISTS windows (
    size_us BIGINT NOT NULL,
    device_id TEXT NOT NULL,         -- '*' for the whole fleet
    start BIGINT NOT NULL,           -- µs since the epoch; the window is [start, "end")
    sensor TEXT NOT NULL,
    "end" BIGINT NOT NULL,
    count BIGINT NOT NULL,
    sum DOUBLE PRECISION NOT NULL,
    mean DOUBLE PRECISION,
    min DOUBLE PRECISION,
    max DOUBLE PRECISION,
    stddev DOUBLE PRECISION,
    first DOUBLE PRECISION,
    last DOUBLE PRECISION,
    p50 DOUBLE PRECISION,
    p95 DOUBLE PRECISION,
    p99 DOUBLE PRECISION,
    version INTEGER NOT NULL,        -- 1 when first emitted, +1 for each late update
    state TEXT NOT NULL,             -- JSON: the exact, mergeable aggregate (quantile sketch included)
    PRIMARY KEY (size_us, device_id, start, sensor)  -- the order of the window queries' filters
);
CREATE TABLE IF NOT EXISTS late_readings (
    seq BIGINT NOT NULL,             -- log position of the reading (it is stored in readings too)
    size_us BIGINT NOT NULL,         -- the window size it came too late for
    device_id TEXT NOT NULL,
    sensor TEXT NOT NULL,
    ts BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    received_at BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    late_by_us BIGINT NOT NULL,      -- how far the watermark was past the window's end
    PRIMARY KEY (seq, size_us)
);
CREATE TABLE IF NOT EXISTS device_events (
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,             -- per device: 1, 2, 3 ... (the twin's version after it)
    ts BIGINT NOT NULL,              -- the event time it refers to
    type TEXT NOT NULL,
    payload TEXT NOT NULL,           -- JSON
    position BIGINT NOT NULL,        -- log position of the record that caused it
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE IF NOT EXISTS twins (
    device_id TEXT PRIMARY KEY,
    device_type TEXT NOT NULL,
    status TEXT NOT NULL,
    last_seen BIGINT,
    version BIGINT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL              -- JSON
);
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL,
    state BYTEA NOT NULL,
    written_at BIGINT NOT NULL
);
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

_F = "float8"
_WINDOW_COLUMNS = (
    'size_us, device_id, start, sensor, "end", count, sum, mean, min, max, stddev, first, last, '
    "p50, p95, p99, version, state"
)
_WINDOW_TYPES = ["int8", "text", "int8", "text", "int8", "int8", _F, _F, _F, _F, _F, _F, _F, _F, _F, _F]
_WINDOW_TYPES += ["int4", "text"]
_LATE_COLUMNS = "seq, size_us, device_id, sensor, ts, value, received_at, window_start, late_by_us"
_LATE_TYPES = ["int8", "int8", "text", "text", "int8", _F, "int8", "int8", "int8"]
_EVENT_COLUMNS = "device_id, seq, ts, type, payload, position"
_EVENT_TYPES = ["text", "int8", "int8", "text", "text", "int8"]
_TWIN_COLUMNS = "device_id, device_type, status, last_seen, version, position, state"
_TWIN_TYPES = ["text", "text", "text", "int8", "int8", "int8", "text"]


def storable(values: Collection[str]) -> list[str]:
    """The values a text column can hold: PostgreSQL text cannot hold a NUL character (intake refuses
    one), so a filter value with one matches nothing, and the server would refuse it as a parameter."""
    return [v for v in values if "\0" not in v]


async def write_derived(con: Connection, derived: Derived, checkpoint: Checkpoint | None) -> None:
    """The derived records, then the checkpoint they complete (in the caller's transaction)."""
    if derived.windows:
        latest: dict[tuple[str, str, int, int], WindowAggregate] = {}
        for w in derived.windows:  # ON CONFLICT may touch a row once: the newest version only
            latest[(w.sensor, w.device_id, w.size_us, w.start)] = w
        rows = [_window_row(w) for w in latest.values()]
        await _upsert(
            con, "windows", _WINDOW_COLUMNS, _WINDOW_TYPES, rows, "size_us, device_id, start, sensor"
        )
    late = derived.late
    if len(late):
        late_rows = zip(
            *(late.seq, late.size_us, late.device_id, late.sensor, late.ts, late.value),
            *(late.received_at, late.window_start, late.late_by_us),
            strict=True,
        )
        await _upsert(con, "late_readings", _LATE_COLUMNS, _LATE_TYPES, list(late_rows), None)
    if derived.events:
        rows = [
            (e.device_id, e.seq, e.ts, e.type, _encode(e.payload).decode(), e.position)
            for e in derived.events
        ]
        await _upsert(con, "device_events", _EVENT_COLUMNS, _EVENT_TYPES, rows, None)
    if derived.twins:
        twins = {t.device_id: t for t in derived.twins}.values()
        rows = [
            (
                t.device_id,
                t.device_type,
                t.status,
                t.last_seen if t.first_seen is not None else None,
                t.version,
                t.position,
                _encode(t.to_state()).decode(),
            )
            for t in twins
        ]
        await _upsert(con, "twins", _TWIN_COLUMNS, _TWIN_TYPES, rows, "device_id")
    if derived.alerts:
        await write_alerts(con, derived.alerts)
    if checkpoint is not None:
        await con.execute(
            """INSERT INTO checkpoints VALUES ('engine', %s, %s, %s)
               ON CONFLICT (name) DO UPDATE
               SET position = excluded.position, state = excluded.state, written_at = excluded.written_at""",
            [checkpoint.position, checkpoint.state, checkpoint.written_at],
        )


def _window_row(w: WindowAggregate) -> tuple[Any, ...]:
    return (
        w.size_us,
        w.device_id,
        w.start,
        w.sensor,
        w.end,
        w.count,
        w.sum,
        w.mean,
        w.min,
        w.max,
        w.stddev,
        w.first,
        w.last,
        w.quantile(0.5),
        w.quantile(0.95),
        w.quantile(0.99),
        w.version,
        _encode(w.to_state()).decode(),
    )


async def _upsert(
    con: Connection,
    table: str,
    columns: str,
    types: list[str],
    rows: Sequence[Sequence[Any]],
    replace_on: str | None,
) -> None:
    """COPY ``rows`` into a temporary twin of ``table``, then insert them: replacing the row of the
    same key when ``replace_on`` names the key, else keeping the stored one."""
    staging = f"incoming_{table}"
    # One per session, emptied at each commit (created once: no catalog churn per write).
    await con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
    async with con.cursor().copy(f"COPY {staging} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)
    if replace_on is None:
        conflict = "DO NOTHING"
    else:
        keys = {k.strip() for k in replace_on.split(",")}
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in (c.strip() for c in columns.split(",")) if c not in keys
        )
        conflict = f"({replace_on}) DO UPDATE SET {updates}"
    await con.execute(
        f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ON CONFLICT {conflict}"
    )


async def checkpoint(con: Connection) -> Checkpoint | None:
    """The engine's checkpoint."""
    cur = await con.execute("SELECT position, state, written_at FROM checkpoints WHERE name = 'engine'")
    row = await cur.fetchone()
    if row is None:
        return None
    position, state, at = row
    return Checkpoint(int(position), bytes(state), int(at))


async def load_twins(con: Connection, device_ids: Collection[str]) -> list[DeviceTwin]:
    """Stored twins of these devices."""
    if not device_ids:
        return []
    cur = await con.execute("SELECT state FROM twins WHERE device_id = ANY(%s)", [storable(device_ids)])
    return [DeviceTwin.from_state(_decode(state)) for (state,) in await cur.fetchall()]


async def list_twins(
    con: Connection, device_type: str | None, status: str | None, limit: int, offset: int
) -> tuple[int, list[DeviceTwin]]:
    """A page of stored twins, by device id, and how many match."""
    if any(v is not None and "\0" in v for v in (device_type, status)):
        return 0, []  # no stored text holds one (see storable)
    where: list[str] = []
    params: list[Any] = []
    if device_type is not None:
        where.append("lower(device_type) = lower(%s)")
        params.append(device_type)
    if status is not None:
        where.append("status = %s")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    cur = await con.execute(f"SELECT count(*) FROM twins {clause}", params)
    total = await cur.fetchone()
    assert total is not None
    # COLLATE "C": the byte order DuckDB and Python sort by, whatever the database's locale.
    cur = await con.execute(
        f'SELECT state FROM twins {clause} ORDER BY device_id COLLATE "C" LIMIT %s OFFSET %s',
        [*params, limit, offset],
    )
    return int(total[0]), [DeviceTwin.from_state(_decode(state)) for (state,) in await cur.fetchall()]


async def query_windows(con: Connection, query: WindowQuery) -> list[WindowAggregate]:
    """Stored windows of one size and device (or the fleet), by start then sensor."""
    if "\0" in query.device_id:
        return []  # no stored text holds one (see storable)
    where = ["size_us = %s", "device_id = %s", "start >= %s", "start < %s"]
    params: list[Any] = [query.size_us, query.device_id, query.start, query.end]
    if query.sensors:
        where.append("sensor = ANY(%s)")
        params.append(storable(query.sensors))
    cur = await con.execute(
        f"""SELECT state FROM windows WHERE {" AND ".join(where)}
            ORDER BY start, sensor COLLATE "C" LIMIT %s""",
        [*params, query.limit],
    )
    return [WindowAggregate.from_state(_decode(state)) for (state,) in await cur.fetchall()]


async def device_events(con: Connection, query: EventQuery) -> list[DeviceEvent]:
    """One device's events by sequence number."""
    if "\0" in query.device_id:
        return []  # no stored text holds one (see storable)
    where = ["device_id = %s", "seq > %s"]
    params: list[Any] = [query.device_id, query.after_seq]
    if query.start is not None:
        where.append("ts >= %s")
        params.append(query.start)
    if query.end is not None:
        where.append("ts < %s")
        params.append(query.end)
    if query.types:
        where.append("type = ANY(%s)")
        params.append(storable(query.types))
    cur = await con.execute(
        f"""SELECT device_id, seq, ts, type, payload, position FROM device_events
            WHERE {" AND ".join(where)} ORDER BY seq LIMIT %s""",
        [*params, query.limit],
    )
    rows = await cur.fetchall()
    return [DeviceEvent(d, int(s), int(t), k, _decode(p), int(pos)) for d, s, t, k, p, pos in rows]


async def late_counts(con: Connection) -> dict[str, int]:
    """Late readings per sensor, counted once (for the smallest window size)."""
    cur = await con.execute(
        """SELECT sensor, count(*) FROM late_readings
           WHERE size_us = (SELECT min(size_us) FROM late_readings)
           GROUP BY sensor ORDER BY sensor COLLATE "C" """
    )
    return {sensor: int(n) for sensor, n in await cur.fetchall()}
