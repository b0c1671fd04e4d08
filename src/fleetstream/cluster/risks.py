"""Failure risk in cluster mode: each worker stores what its partitions' predictors score, the api
reads it.

Embedded, ``GET /api/v1/devices/{id}`` and ``GET /api/v1/models/scores`` read the risk from the
engine's own predictor. In cluster mode the predictor of a device runs in the worker owning its
partition (:mod:`.worker_models`), so the worker writes each device's risk, when a closed window
re-scores it, to the table ``device_risk`` in the same transaction as the partition's checkpoint:
the api (:class:`ClusterModelControl`) then answers from the store what the embedded engine
answers from memory. The risk is not a device event (it changes every minute for every host), so
one row per device is kept, replaced each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetstream.domain.timeutil import us_to_iso
from fleetstream.engine.model_control import ModelControl
from fleetstream.engine.prediction import default_model

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import Connection, PostgresStore
    from fleetstream.config import PredictorSettings
    from fleetstream.engine.pipeline import Engine
    from fleetstream.engine.prediction import PredictionStage

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS device_risk (
    device_id     TEXT PRIMARY KEY,
    score         DOUBLE PRECISION NOT NULL,
    model_round   INTEGER,                  -- NULL: the model shipped in the package
    model_version TEXT    NOT NULL,
    at_us         BIGINT  NOT NULL,         -- end of the newest window scored
    alert         BOOLEAN NOT NULL          -- a failure_predicted alert is open
);
CREATE INDEX IF NOT EXISTS device_risk_score ON device_risk (score DESC, device_id);
"""

_UPSERT = """
INSERT INTO device_risk (device_id, score, model_round, model_version, at_us, alert)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (device_id) DO UPDATE SET score = EXCLUDED.score, model_round = EXCLUDED.model_round,
    model_version = EXCLUDED.model_version, at_us = EXCLUDED.at_us, alert = EXCLUDED.alert
"""


@dataclass(frozen=True, slots=True)
class Risk:
    """One device's risk as :meth:`PredictionStage.risk` gives it, and whether its alert is open."""

    device_id: str
    score: float
    model_round: int | None
    model_version: str
    at_us: int
    alert: bool

    def to_json(self) -> dict[str, Any]:
        """The twin's ``failure_risk`` (the embedded engine's shape)."""
        return {
            "score": self.score,
            "model_round": self.model_round,
            "model_version": self.model_version,
            "at": us_to_iso(self.at_us),
        }


def changed_risks(stage: PredictionStage) -> list[Risk]:
    """The risks of the devices the stage scored since the last call."""
    changed = stage.take_changed()
    if not changed:
        return []
    active = stage.open_alerts()
    out = []
    for device_id in changed:
        risk = stage.risk(device_id)
        if risk is not None:
            out.append(
                Risk(
                    device_id,
                    float(risk["score"]),
                    risk["model_round"],
                    str(risk["model_version"]),
                    int(risk["at_us"]),
                    device_id in active,
                )
            )
    return out


async def create_table(store: PostgresStore) -> None:
    """Create the risk table if missing."""
    async with store._writing() as con:  # the store's single writer: one transaction at a time
        await con.execute("SELECT pg_advisory_xact_lock(hashtext('fleetstream schema'))")
        await con.execute(DDL)


async def write_risks(con: Connection, risks: Sequence[Risk]) -> None:
    """Store risks (inside a worker's checkpoint transaction)."""
    if not risks:
        return
    rows = [(r.device_id, r.score, r.model_round, r.model_version, r.at_us, r.alert) for r in risks]
    async with con.cursor() as cur:
        await cur.executemany(_UPSERT, rows)


def _risk(row: Sequence[Any]) -> Risk:
    round_ = None if row[2] is None else int(row[2])
    return Risk(str(row[0]), float(row[1]), round_, str(row[3]), int(row[4]), bool(row[5]))


_COLUMNS = "device_id, score, model_round, model_version, at_us, alert"


async def read_risk(store: PostgresStore, device_id: str) -> Risk | None:
    """The device's stored risk (None: never scored)."""
    rows = await store.execute(f"SELECT {_COLUMNS} FROM device_risk WHERE device_id = %s", [device_id])
    return _risk(rows[0]) if rows else None


async def read_scores(store: PostgresStore, limit: int) -> list[Risk]:
    """The ``limit`` highest stored risks, highest first (ties by device id)."""
    sql = f"SELECT {_COLUMNS} FROM device_risk ORDER BY score DESC, device_id LIMIT %s"
    return [_risk(row) for row in await store.execute(sql, [limit])]


class ClusterModelControl(ModelControl):
    """The api's view of the predictor: the registry's newest round, the workers' stored risks.

    Training (``POST /api/v1/models/train``) runs in the api process as embedded, over the windows
    the workers stored; each round goes to the shared registry, where every worker finds it within
    ``predictor.reload_s``.
    """

    def __init__(self, engine: Engine, settings: PredictorSettings | None, store: PostgresStore) -> None:
        super().__init__(engine, settings)
        self.store = store
        self._refresh: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the risk table, choose the model, then look for newer rounds every ``reload_s``."""
        await create_table(self.store)
        if self.enabled:
            self.choice = await self._newest() or default_model()
        self._refresh = asyncio.create_task(self._refresh_forever(), name="fleetstream-api-models")

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_s)
            try:
                await self.reload(force=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep the model last read
                log.warning("re-reading the model registry failed: %s", exc)

    async def stop(self) -> None:
        """Stop re-reading; cancel a training run in progress."""
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
        await super().stop()

    async def risk(self, device_id: str) -> dict[str, Any] | None:
        """The device's risk as its owning worker last stored it."""
        if not self.enabled:
            return None
        found = await read_risk(self.store, device_id)
        return None if found is None else found.to_json()

    async def scores(self, limit: int) -> list[dict[str, Any]]:
        """The highest stored risks."""
        if not self.enabled:
            return []
        return [
            {"device_id": r.device_id, "score": r.score, "alert": r.alert, "at": us_to_iso(r.at_us)}
            for r in await read_scores(self.store, limit)
        ]

    async def _before_training(self) -> None:
        """Nothing to flush: the workers store windows with every batch."""
