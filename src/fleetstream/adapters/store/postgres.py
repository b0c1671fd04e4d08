"""``postgresql://user@host:port/db``: the store of cluster mode, on PostgreSQL with psycopg 3.

Readings arrive by binary COPY, one transaction per group commit, sorted by event time so the BRIN
index on ``ts`` (or, with TimescaleDB, the hypertable's chunks) prunes time-range scans. Times are
stored as the domain keeps them, integer microseconds since the epoch (UTC), so every bucket and
comparison is the same integer arithmetic as in the other stores. One connection writes (a lock
keeps its transactions in order, as DuckDB's writer thread does); a few more answer queries.
Driver errors become :class:`~fleetstream.errors.StoreError` at this edge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import psycopg

from fleetstream.adapters.store import postgres_alerts as alerts_db
from fleetstream.adapters.store import postgres_derived as derived_db
from fleetstream.adapters.store import postgres_queries as queries
from fleetstream.adapters.store import postgres_rollups as rollups
from fleetstream.adapters.store.duckdb import _message_positions, _replayed
from fleetstream.domain.alerts import Alert
from fleetstream.domain.batch import Batch
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.records import DedupKey
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import WindowAggregate
from fleetstream.errors import ConfigError, StoreError
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

log = logging.getLogger(__name__)

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

SCHEMA_VERSION = 4  # 3: alerts, rules, zones, model_rounds; 4: readings_1m (per-minute rollups)
_READING_COLUMNS = queries.READING_COLUMNS
_READING_TYPES = ["int8", "text", "int8", "text", "float8", "text", "text", "text", "int8", "text", "int8"]
_MESSAGE_COLUMNS = queries.MESSAGE_COLUMNS
_MESSAGE_TYPES = ["int8", "text", "int8", "text", "text", "text", "int8"]


class PostgresStore:
    """The :class:`~fleetstream.ports.Store` on a PostgreSQL database (created schema and all).

    ``rollups=off`` in the URL's query answers metric queries from raw rows only (the per-minute
    rollups are still maintained): for comparing the two, or ruling the rollups out.
    """

    def __init__(self, url: str, *, readers: int = 2) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            msg = f"not a postgresql URL: {url!r}"
            raise ConfigError(msg)
        url, self.use_rollups = _rollups_option(url)
        self.url = url
        self._readers_count = readers
        self._writer: Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[Connection] = asyncio.Queue()
        self._opened: list[Connection] = []
        self.layout = ""
        """How readings are laid out for time ranges: a ``TimescaleDB hypertable`` or a
        ``BRIN-indexed table``."""

    async def start(self) -> None:
        try:
            self._writer = await self._connect()
            self.layout = await queries.create_schema(self._writer, SCHEMA_VERSION)
            for _ in range(self._readers_count):
                self._readers.put_nowait(await self._connect())
        except psycopg.Error as exc:
            await self.close()
            msg = f"cannot open PostgreSQL store {_redacted(self.url)}: {exc}"
            raise StoreError(msg) from exc
        except BaseException:
            await self.close()
            raise
        log.info("PostgreSQL store %s: readings in a %s", _redacted(self.url), self.layout)

    async def _connect(self) -> Connection:
        con: Connection = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        self._opened.append(con)
        return con

    async def close(self) -> None:
        for con in self._opened:
            await con.close()
        self._opened.clear()
        self._writer = None
        self._readers = asyncio.Queue()

    # -- plumbing ------------------------------------------------------------------

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[Connection]:
        """The writer connection in a transaction, one at a time."""
        if self._writer is None:
            msg = "the PostgreSQL store is not open"
            raise StoreError(msg)
        async with self._write_lock:
            try:
                if self._writer.closed or self._writer.broken:  # the server dropped it: a new one
                    self._writer = await self._connect()
                async with self._writer.transaction():
                    yield self._writer
            except psycopg.Error as exc:
                raise _store_error(exc) from exc

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[Connection]:
        """A reader connection of the pool (waits for a free one)."""
        if not self._opened:
            msg = "the PostgreSQL store is not open"
            raise StoreError(msg)
        con = await self._readers.get()
        try:
            if con.closed or con.broken:  # the server dropped it: a new one
                con = await self._connect()
            yield con
        except psycopg.Error as exc:
            raise _store_error(exc) from exc
        finally:
            self._readers.put_nowait(con)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (for tests, benchmarks and the shell)."""
        async with self._reading() as con:
            cur = await con.execute(sql, list(params))
            return await cur.fetchall()

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


def _rollups_option(url: str) -> tuple[str, bool]:
    """The URL without fleetstream's own ``rollups=on|off`` parameter (libpq refuses unknown ones),
    and whether metric queries may use the rollups."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, True
    kept, use = [], True
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key != "rollups":
            kept.append(pair)
        elif value in ("on", "off"):
            use = value == "on"
        else:
            msg = f"rollups={value!r} in the PostgreSQL URL: expected on or off"
            raise ConfigError(msg)
    return base + ("?" + "&".join(kept) if kept else ""), use


def _store_error(exc: psycopg.Error) -> StoreError:
    kind = "unreachable" if isinstance(exc, psycopg.OperationalError) else "failed"
    msg = f"PostgreSQL {kind}: {str(exc).strip()}"
    return StoreError(msg)


def _redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"
