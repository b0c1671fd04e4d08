"""``postgresql://user@host:port/db``: the store of cluster mode, on PostgreSQL with psycopg 3.

Readings arrive by binary COPY, one transaction per group commit, sorted by event time so the BRIN
index on ``ts`` (or, with TimescaleDB, the hypertable's chunks) prunes time-range scans. Times are
stored as the domain keeps them, integer microseconds since the epoch (UTC), so every bucket and
comparison is the same integer arithmetic as in the other stores. One connection writes (a lock
keeps its transactions in order, as DuckDB's writer thread does); a few more answer queries.
Driver errors become :class:`~fleetstream.errors.StoreError` at this edge.

Opening the connections and using them (the writer's lock, the readers' pool) are in
:mod:`.postgres_connection`; this module holds the store's reads and writes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import msgspec
import numpy as np

from fleetstream.adapters.store import postgres_alerts as alerts_db
from fleetstream.adapters.store import postgres_derived as derived_db
from fleetstream.adapters.store import postgres_queries as queries
from fleetstream.adapters.store import postgres_rollups as rollups
from fleetstream.adapters.store.duckdb import _message_positions, _replayed
from fleetstream.adapters.store.postgres_connection import SCHEMA_VERSION as SCHEMA_VERSION
from fleetstream.adapters.store.postgres_connection import Connection as Connection  # its old home
from fleetstream.adapters.store.postgres_connection import PostgresConnections
from fleetstream.domain.alerts import Alert
from fleetstream.domain.batch import Batch
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.records import DedupKey
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import WindowAggregate
from fleetstream.ports import (
    AlertQuery,
    Checkpoint,
    DeadLetter,
    Derived,
    EventQuery,
    MetricsQuery,
    SeriesQuery,
    WindowQuery,
)

_READING_COLUMNS = queries.READING_COLUMNS
_READING_TYPES = ["int8", "text", "int8", "text", "float8", "text", "text", "text", "int8", "text", "int8"]
_MESSAGE_COLUMNS = queries.MESSAGE_COLUMNS
_MESSAGE_TYPES = ["int8", "text", "int8", "text", "text", "text", "int8"]


class PostgresStore(PostgresConnections):
    """The :class:`~fleetstream.ports.Store` on a PostgreSQL database (created schema and all).

    ``rollups=off`` in the URL's query answers metric queries from raw rows only (the per-minute
    rollups are still maintained): for comparing the two, or ruling the rollups out.
    """

    # -- writing ---------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        async with self._writing() as con:
            await write_batch(con, batch)

    # -- dead letters ------------------------------------------------------------------

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        async with self._writing() as con:
            cur = con.cursor()
            async with cur.copy(
                "COPY dead_letters (received_at, source, topic, reason, errors, payload) "
                "FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["int8", "text", "text", "text", "text", "bytea"])
                for d in letters:
                    errors = msgspec.json.encode(list(d.errors)).decode()
                    await copy.write_row((d.received_at, d.source, d.topic, d.reason, errors, d.payload))

    async def dead_letters(self, source: str | None = None, limit: int = 100) -> list[DeadLetter]:
        if source is not None and "\0" in source:
            return []  # no stored text holds one (see postgres_derived.storable)
        where, params = ("WHERE source = %s", [source]) if source is not None else ("", [])
        async with self._reading() as con:
            cur = await con.execute(
                f"""SELECT id, received_at, source, topic, reason, errors, payload
                    FROM dead_letters {where} ORDER BY id DESC LIMIT %s""",
                [*params, limit],
            )
            rows = await cur.fetchall()
        return [
            DeadLetter(at, src, topic, reason, bytes(payload), tuple(msgspec.json.decode(errors)), id_)
            for id_, at, src, topic, reason, errors, payload in rows
        ]

    # -- dedup support -------------------------------------------------------------------

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]:
        if not items:
            return set()
        async with self._writing() as con:
            return await queries.stored_keys(con, items)

    async def recent_keys(self, since: int) -> list[tuple[DedupKey, int]]:
        async with self._writing() as con:
            cur = await con.execute(
                """SELECT device_id, sensor, msg_id, ts FROM readings WHERE ts >= %(since)s
                   UNION ALL
                   SELECT device_id, '@' || kind, msg_id, ts FROM device_messages WHERE ts >= %(since)s""",
                {"since": since},
            )
            rows = await cur.fetchall()
        return [((d, s, m if m is not None else ts), ts) for d, s, m, ts in rows]

    async def log_position(self) -> tuple[int, int | None]:
        async with self._writing() as con:
            cur = await con.execute(
                """SELECT max(seq), max(t) FROM (
                     SELECT max(seq) AS seq, max(ts) AS t FROM readings
                     UNION ALL
                     SELECT max(seq), max(ts) FROM device_messages) AS both_tables"""
            )
            row = await cur.fetchone()
        assert row is not None
        return (int(row[0]) if row[0] is not None else 0, row[1])

    # -- queries -------------------------------------------------------------------------

    async def query_metrics(self, query: MetricsQuery) -> dict[str, dict[str, Any]]:
        async with self._reading() as con:
            if self.use_rollups and rollups.usable(query):
                return await rollups.query_metrics(con, query)
            return await queries.query_metrics(con, query)

    async def query_series(self, query: SeriesQuery) -> dict[str, list[dict[str, Any]]]:
        async with self._reading() as con:
            return await queries.query_series(con, query)

    async def sensors(self) -> set[str]:
        async with self._reading() as con:
            cur = await con.execute("SELECT DISTINCT sensor FROM readings")
            return {row[0] for row in await cur.fetchall()}

    # -- derived state ---------------------------------------------------------------------

    async def write_derived(self, derived: Derived, checkpoint: Checkpoint | None = None) -> None:
        async with self._writing() as con:
            await derived_db.write_derived(con, derived, checkpoint)

    async def checkpoint(self) -> Checkpoint | None:
        async with self._writing() as con:
            return await derived_db.checkpoint(con)

    async def load_twins(self, device_ids: Collection[str]) -> list[DeviceTwin]:
        async with self._writing() as con:
            return await derived_db.load_twins(con, device_ids)

    async def list_twins(
        self, device_type: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[int, list[DeviceTwin]]:
        async with self._reading() as con:
            return await derived_db.list_twins(con, device_type, status, limit, offset)

    async def query_windows(self, query: WindowQuery) -> list[WindowAggregate]:
        async with self._reading() as con:
            return await derived_db.query_windows(con, query)

    async def device_events(self, query: EventQuery) -> list[DeviceEvent]:
        async with self._reading() as con:
            return await derived_db.device_events(con, query)

    async def late_counts(self) -> dict[str, int]:
        async with self._reading() as con:
            return await derived_db.late_counts(con)

    async def save_model_round(self, model_round: ModelRound) -> None:
        async with self._writing() as con:
            await alerts_db.save_model_round(con, model_round)

    async def list_model_rounds(self) -> list[ModelRound]:
        async with self._reading() as con:
            return await alerts_db.list_model_rounds(con)

    # -- alerts, rules and zones -------------------------------------------------------------

    async def query_alerts(self, query: AlertQuery) -> tuple[int, list[Alert]]:
        async with self._reading() as con:
            return await alerts_db.query_alerts(con, query)

    async def get_alert(self, alert_id: str) -> Alert | None:
        async with self._reading() as con:
            return await alerts_db.get_alert(con, alert_id)

    async def definitions(self, kind: str) -> dict[str, dict[str, Any]]:
        async with self._reading() as con:
            return await alerts_db.definitions(con, kind)

    async def put_definition(self, kind: str, def_id: str, definition: dict[str, Any]) -> None:
        async with self._writing() as con:
            await alerts_db.put_definition(con, kind, def_id, definition)

    async def delete_definition(self, kind: str, def_id: str) -> bool:
        async with self._writing() as con:
            return await alerts_db.delete_definition(con, kind, def_id)

    # -- stored log rows -------------------------------------------------------------------

    async def device_rows(self, device_id: str, until: int) -> Batch:
        if "\0" in device_id:
            return _replayed([], [])  # no stored text holds one (see postgres_derived.storable)
        async with self._reading() as con:
            cur = await con.execute(
                f"SELECT {_READING_COLUMNS} FROM readings WHERE device_id = %s AND ts <= %s ORDER BY seq",
                [device_id, until],
            )
            rows = await cur.fetchall()
            cur = await con.execute(
                f"""SELECT {_MESSAGE_COLUMNS} FROM device_messages
                    WHERE device_id = %s AND ts <= %s ORDER BY seq""",
                [device_id, until],
            )
            bare = await cur.fetchall()
        return _replayed(rows, bare)

    async def replay(self, after: int, max_records: int) -> Batch:
        async with self._writing() as con:
            rows, bare = await queries.replay_rows(con, after, max_records)
        return _replayed(rows, bare)


async def write_batch(con: Connection, batch: Batch) -> None:
    """Write a batch's readings (and their per-minute rollups) and events on ``con`` (in the
    caller's transaction)."""
    if len(batch):
        positions = _message_positions(batch)
        ts = np.asarray(batch.ts, np.int64)
        order = np.argsort(ts, kind="stable").tolist()
        columns = (
            batch.seq,
            batch.device_id,
            batch.ts,
            batch.sensor,
            batch.value,
            batch.unit,
            batch.device_type,
            batch.msg_id,
            batch.received_at,
            batch.kind,
            [None if p is None else int(p) for p in positions],
        )
        cur = con.cursor()
        async with cur.copy(f"COPY readings ({_READING_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_READING_TYPES)
            for i in order:
                await copy.write_row([column[i] for column in columns])
        await rollups.add_batch(con, batch.sensor, ts, batch.value)
    if batch.events:
        bare = sorted(batch.events, key=lambda m: m.ts)
        cur = con.cursor()
        async with cur.copy(f"COPY device_messages ({_MESSAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_MESSAGE_TYPES)
            for m in bare:
                row = (m.seq, m.device_id, m.ts, m.kind, m.device_type, m.msg_id, m.received_at)
                await copy.write_row(row)
