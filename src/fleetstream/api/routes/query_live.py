"""``GET /api/v1/stats/live``: running metrics of everything acknowledged since start.

Read from the engine's in-memory statistics, not the store; :func:`ingest_counters` also feeds
``/metrics``.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request, Response

from fleetstream.api.deps import EngineDep
from fleetstream.api.routes.query_params import split_values
from fleetstream.domain.timeutil import us_to_iso

# No tags of its own: query.py includes it in its router, which tags every route "query".
router = APIRouter()


@router.get("/api/v1/stats/live", summary="Running metrics of everything acknowledged since start")
async def live_stats(
    request: Request,
    engine: EngineDep,
    sensor: Annotated[list[str] | None, Query(description="only these sensors")] = None,
    device_id: Annotated[list[str] | None, Query(description="per-device rows of these devices")] = None,
    per_device: Annotated[bool, Query(description="include per device+sensor rows of every device")] = False,
    limit: Annotated[int, Query(ge=1, le=100_000, description="most per-device rows")] = 1000,
) -> Response:
    """Per sensor (and per device+sensor): count, mean, min, max, stddev, last value and its event
    time, and per sensor `late` (readings beyond the allowed lateness, kept out of windows), plus
    the ingest rate and the current `watermark`. Kept across restarts (checkpointed). Per-device
    rows come for the devices named by `device_id`, or for all (up to `limit`) with
    `per_device=true`."""
    runtime = request.app.state.runtime
    sensors = set(split_values(sensor))
    devices = set(split_values(device_id))
    late = engine.processors.late_total
    body: dict[str, Any] = {
        "ingest": ingest_counters(runtime),
        "watermark": None
        if engine.processors.windows.watermark is None
        else us_to_iso(engine.processors.windows.watermark),
        "sensors": {
            name: {**_stats(s.as_dict()), "late": late.get(name, 0)}
            for name, s in sorted(engine.stats.sensors.items())
            if not sensors or name in sensors
        },
    }
    if devices or per_device:
        rows: dict[str, dict[str, Any]] = {}
        chosen = sorted(engine.stats.series(devices or None, sensors or None).items())
        if len(chosen) > limit:
            body["truncated"] = True
        for (dev, sen), s in chosen[:limit]:
            rows.setdefault(dev, {})[sen] = _stats(s.as_dict())
        body["devices"] = rows
    return Response(msgspec.json.encode(body), media_type="application/json")


def _stats(row: dict[str, Any]) -> dict[str, Any]:
    if "last_ts" in row:
        row["last_ts"] = us_to_iso(row["last_ts"])
    return row


def ingest_counters(runtime: Any) -> dict[str, Any]:
    """Counters of the gateway and the engine, for the live view and /metrics."""
    engine = runtime.engine
    return {
        "rate_per_s": round(engine.rate.rate(runtime.clock.monotonic()), 1),
        "readings_total": engine.stats.readings_total,
        "messages_total": engine.messages_total,
        "devices": len(engine.stats.device_ids),
        "duplicates_total": engine.dedup.duplicates_total,
        "rejected_total": runtime.gateway.rejected_total,
        "requests_total": runtime.gateway.requests_total,
        "log_position": engine.position,
        "late_total": sum(engine.processors.late_total.values()),
        "replayed_total": engine.replayed,
    }
