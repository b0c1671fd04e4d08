"""The PostgreSQL store's connections: opening them, the writer in order, the readers' pool.

:class:`PostgresConnections` opens one writer connection (creating the schema) and a few
readers, reopens one the server dropped, keeps the writer's transactions in order under a lock,
and turns driver errors into :class:`~fleetstream.errors.StoreError`. The store's reads and
writes (:class:`~fleetstream.adapters.store.postgres.PostgresStore`) build on it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg

from fleetstream.adapters.store import postgres_queries as queries
from fleetstream.errors import ConfigError, StoreError

# The store's logger, as before its connections had a module of their own.
log = logging.getLogger("fleetstream.adapters.store.postgres")

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

SCHEMA_VERSION = 4  # 3: alerts, rules, zones, model_rounds; 4: readings_1m (per-minute rollups)


class PostgresConnections:
    """The connections of a :class:`~fleetstream.adapters.store.postgres.PostgresStore`."""

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
