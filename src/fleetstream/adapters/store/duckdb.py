"""``duckdb:///path/to/file.duckdb``: the embedded store.

Readings are appended from Arrow columns in one transaction per group commit
(never row by row), sorted by event time within each append so range scans skip
row groups by their min/max. DuckDB is synchronous: writes run on one dedicated
thread with their own connection, queries on a small pool with a cursor each,
so neither blocks the event loop (DuckDB releases the GIL while it works).

This module holds the store itself (its lifecycle and threads); the SQL lives
in the ``duckdb_*`` modules beside it, one concern each: the schema, the ingest
writes, the log replay, the reading queries, derived state, alerts and models.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import duckdb

from fleetstream.adapters.store import duckdb_alerts as alerts_db
from fleetstream.adapters.store import duckdb_derived as derived
from fleetstream.adapters.store import duckdb_ingest as ingest
from fleetstream.adapters.store import duckdb_models as models
from fleetstream.adapters.store import duckdb_queries as queries
from fleetstream.adapters.store import duckdb_replay as replays
from fleetstream.adapters.store import duckdb_schema as schema
from fleetstream.adapters.store.duckdb_derived import write_derived

# Re-exported: other stores, benchmarks and tests import these from here.
from fleetstream.adapters.store.duckdb_ingest import _message_positions as _message_positions
from fleetstream.adapters.store.duckdb_queries import AGGREGATES as AGGREGATES
from fleetstream.adapters.store.duckdb_replay import _message_of as _message_of
from fleetstream.adapters.store.duckdb_replay import _replayed as _replayed
from fleetstream.adapters.store.duckdb_schema import _READINGS_SCHEMA as _READINGS_SCHEMA
from fleetstream.adapters.store.duckdb_schema import SCHEMA_VERSION as SCHEMA_VERSION
from fleetstream.adapters.store.duckdb_schema import path_of
from fleetstream.domain.alerts import Alert
from fleetstream.domain.batch import Batch
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.records import DedupKey
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.domain.windows import WindowAggregate
from fleetstream.errors import StoreError
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

T = TypeVar("T")


class DuckDBStore:
    """The :class:`~fleetstream.ports.Store` on a DuckDB file."""

    def __init__(self, url: str, *, memory_limit: str | None = None) -> None:
        self.url = url
        self.path = path_of(url)
        self._memory_limit = memory_limit
        self._con: duckdb.DuckDBPyConnection | None = None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="duckdb-write")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="duckdb-read")
        self._local = threading.local()

    async def start(self) -> None:
        await self._on_writer(self._open)

    def _open(self) -> None:
        self._con = schema.connect(self.path, self._memory_limit)

    async def close(self) -> None:
        if self._con is not None:
            await self._on_writer(self._close)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    def _close(self) -> None:
        assert self._con is not None
        self._con.execute("CHECKPOINT")
        self._con.close()
        self._con = None

    # -- writing ---------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        readings, bare = ingest._to_arrow(batch)
        await self._on_writer(lambda: ingest.write(self._connection(), readings, bare))

    # -- dead letters ------------------------------------------------------------

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        table = ingest.dead_letters_table(letters)
        await self._on_writer(lambda: ingest.write_dead_letters(self._connection(), table))

    async def dead_letters(self, source: str | None = None, limit: int = 100) -> list[DeadLetter]:
        return await self._on_reader(lambda: ingest.dead_letters(self._cursor(), source, limit))

    # -- dedup support -----------------------------------------------------------

    async def stored_keys(self, items: Sequence[tuple[DedupKey, int]]) -> set[DedupKey]:
        if not items:
            return set()
        candidates = ingest.candidates_table(items)
        return await self._on_writer(lambda: ingest.stored_keys(self._connection(), candidates))

    async def recent_keys(self, since: int) -> list[tuple[DedupKey, int]]:
        return await self._on_writer(lambda: ingest.recent_keys(self._connection(), since))

    async def log_position(self) -> tuple[int, int | None]:
        return await self._on_writer(lambda: ingest.log_position(self._connection()))

    # -- queries -----------------------------------------------------------------

    async def query_metrics(self, query: MetricsQuery) -> dict[str, dict[str, Any]]:
        return await self._on_reader(lambda: queries.query_metrics(self._cursor(), query))

    async def query_series(self, query: SeriesQuery) -> dict[str, list[dict[str, Any]]]:
        return await self._on_reader(lambda: queries.query_series(self._cursor(), query))

    async def sensors(self) -> set[str]:
        return await self._on_reader(lambda: queries.sensors(self._cursor()))

    # -- derived state -------------------------------------------------------------

    async def write_derived(self, derived: Derived, checkpoint: Checkpoint | None = None) -> None:
        # The parameter keeps the port's name (callers may pass it by keyword), shadowing the module.
        await self._on_writer(lambda: write_derived(self._connection(), derived, checkpoint))

    async def checkpoint(self) -> Checkpoint | None:
        return await self._on_writer(lambda: derived.checkpoint(self._connection()))

    async def load_twins(self, device_ids: Collection[str]) -> list[DeviceTwin]:
        return await self._on_writer(lambda: derived.load_twins(self._connection(), device_ids))

    async def list_twins(
        self, device_type: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[int, list[DeviceTwin]]:
        return await self._on_reader(
            lambda: derived.list_twins(self._cursor(), device_type, status, limit, offset)
        )

    async def query_windows(self, query: WindowQuery) -> list[WindowAggregate]:
        return await self._on_reader(lambda: derived.query_windows(self._cursor(), query))

    async def device_events(self, query: EventQuery) -> list[DeviceEvent]:
        return await self._on_reader(lambda: derived.device_events(self._cursor(), query))

    async def late_counts(self) -> dict[str, int]:
        return await self._on_reader(lambda: derived.late_counts(self._cursor()))

    async def query_alerts(self, query: AlertQuery) -> tuple[int, list[Alert]]:
        return await self._on_reader(lambda: alerts_db.query_alerts(self._cursor(), query))

    async def get_alert(self, alert_id: str) -> Alert | None:
        return await self._on_reader(lambda: alerts_db.get_alert(self._cursor(), alert_id))

    async def definitions(self, kind: str) -> dict[str, dict[str, Any]]:
        return await self._on_writer(lambda: alerts_db.definitions(self._connection(), kind))

    async def put_definition(self, kind: str, def_id: str, definition: dict[str, Any]) -> None:
        await self._on_writer(lambda: alerts_db.put_definition(self._connection(), kind, def_id, definition))

    async def delete_definition(self, kind: str, def_id: str) -> bool:
        return await self._on_writer(lambda: alerts_db.delete_definition(self._connection(), kind, def_id))

    async def device_rows(self, device_id: str, until: int) -> Batch:
        return await self._on_reader(lambda: replays.device_rows(self._cursor(), device_id, until))

    async def replay(self, after: int, max_records: int) -> Batch:
        return await self._on_writer(lambda: replays.replay(self._connection(), after, max_records))

    async def save_model_round(self, model_round: ModelRound) -> None:
        await self._on_writer(lambda: models.save_model_round(self._connection(), model_round))

    async def list_model_rounds(self) -> list[ModelRound]:
        return await self._on_reader(lambda: models.list_model_rounds(self._cursor()))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query (for tests, benchmarks and the shell)."""
        return await self._on_reader(lambda: self._cursor().execute(sql, list(params)).fetchall())

    # -- plumbing ----------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            msg = "the DuckDB store is not open"
            raise StoreError(msg)
        return self._con

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor: duckdb.DuckDBPyConnection | None = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._connection().cursor()
            self._local.cursor = cursor
        return cursor

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        return await _run(self._writer, fn, *args)

    async def _on_reader(self, fn: Callable[..., T], *args: Any) -> T:
        return await _run(self._readers, fn, *args)


async def _run(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
    except duckdb.Error as exc:
        msg = f"DuckDB: {exc}"
        raise StoreError(msg) from exc
