"""Device types registered through any api instance, shared by every process through PostgreSQL.

In embedded mode the registry is a JSON file in the data directory (:mod:`fleetstream.ingest.
typeregistry`). In cluster mode many processes need it: an api instance registers a type, and
every gateway must then validate that type's messages. So the versions live in the table
``device_types``, one row per version, never updated or deleted (a registration only appends),
and every gateway and api process re-reads it:

- Every second a process asks for the table's fingerprint (its row count and newest row id: one
  query over a table of a few rows, so a process with nothing new pays one round trip), and only
  when it changed reads the rows and recompiles the validators. A type registered through one
  api is accepted by every gateway about a second later.
- A registration is checked (name, schema, the compatibility rule's 409) against the versions
  stored *now*, then inserted under the primary key ``(key, version)``. Two apis registering the
  same type at once both compute "version N+1"; the key lets one insert win, the other finds its
  row taken, reads again, and checks its request against the winner: identical (200), compatible
  (version N+2) or breaking (409). So there is never a second "version 2".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from fleetstream.cluster.outage import OutageLog
from fleetstream.errors import Conflict
from fleetstream.ingest.typeregistry import UserTypes
from fleetstream.ingest.usertypes import UserType, key_of

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import PostgresStore

log = logging.getLogger(__name__)

REFRESH_S = 1.0
ATTEMPTS = 5  # registrations racing for the same type: each lost race reads the winner's first

DDL = """
CREATE TABLE IF NOT EXISTS device_types (
    key           TEXT    NOT NULL,     -- the name as lookups compare it (usertypes.key_of)
    version       INTEGER NOT NULL,
    id            BIGSERIAL UNIQUE,     -- the order rows were added in: the fingerprint's part
    spec          TEXT    NOT NULL,     -- JSON: UserType.spec()
    registered_at BIGINT  NOT NULL,     -- µs since the epoch
    PRIMARY KEY (key, version)
);
"""
_FINGERPRINT = "SELECT count(*), coalesce(max(id), 0) FROM device_types"
_ROWS = "SELECT spec FROM device_types ORDER BY key, version"
_INSERT = """INSERT INTO device_types (key, version, spec, registered_at) VALUES (%s, %s, %s, %s)
    ON CONFLICT (key, version) DO NOTHING RETURNING id"""


class StoredTypes(UserTypes):
    """The registry of user device types, kept in PostgreSQL and re-read every second."""

    def __init__(self, store: PostgresStore, *, refresh_s: float = REFRESH_S) -> None:
        super().__init__(None)
        self.store = store
        self.refresh_s = refresh_s
        self.fingerprint: tuple[int, int] | None = None
        self.reloads = 0  # how often the rows were read (not the fingerprint): for the tests
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the table if missing, read it, then look for changes every ``refresh_s``."""
        async with self.store._writing() as con:  # one writer transaction at a time
            # processes start together: one creates the table, the others wait and find it
            await con.execute("SELECT pg_advisory_xact_lock(hashtext('fleetstream schema'))")
            await con.execute(DDL)
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name="fleetstream-device-types")

    async def stop(self) -> None:
        """Stop re-reading (the types read so far stay)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> bool:
        """Read the stored versions if the table changed since the last read; whether it did."""
        row = (await self.store.execute(_FINGERPRINT))[0]
        fingerprint = (int(row[0]), int(row[1]))
        if fingerprint == self.fingerprint:
            return False
        rows = await self.store.execute(_ROWS)
        specs: list[dict[str, Any]] = [msgspec.json.decode(r[0]) for r in rows]
        self.replace(specs)
        self.fingerprint = fingerprint
        self.reloads += 1
        log.info("device types: %d registered (%d versions)", len(self), len(specs))
        return True

    async def _refresh_forever(self) -> None:
        # one line when the store goes away and one when it is back, not one per second between
        outage = OutageLog(log, "device types (validating with the types read so far):")
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep validating with the types read
                outage.failed(exc)
            else:
                outage.succeeded()

    async def submit(self, body: Any, *, force: bool = False) -> tuple[UserType, bool]:
        """Register a version against the versions stored now; stored before it is answered.

        Raises:
            InvalidInput: a bad request, naming the field.
            IncompatibleType: the new version would reject messages the current one accepts.
            Conflict: other registrations of the type kept winning the race (retry).
        """
        for _ in range(ATTEMPTS):
            await self.refresh()
            new, created = self.prepare(body, force=force)
            if not created:
                return new, False
            if await self._insert(new):
                await self.refresh()  # holds it now, and whatever else was added meanwhile
                return new, True
            log.info("version %d of %s was registered meanwhile: checking again", new.version, new.name)
        msg = f"device type {body.get('name')!r} is being registered concurrently: retry"
        raise Conflict(msg)

    async def _insert(self, new: UserType) -> bool:
        """Store one version; False if that version of the type exists already."""
        spec = msgspec.json.encode(new.spec()).decode()
        now_us = time.time_ns() // 1000
        async with self.store._writing() as con:
            cur = await con.execute(_INSERT, [key_of(new.name), new.version, spec, now_us])
            return bool(await cur.fetchall())
