"""Queries: ``GET /api/v1/metrics``, ``GET /api/v1/series``, ``POST /compute/metrics``,
``GET /api/v1/stats/live``.

The routes over stored readings live here; beside them, the query-string parameters they share
in :mod:`~fleetstream.api.routes.query_params`, ``POST /compute/metrics`` in
:mod:`~fleetstream.api.routes.query_compute` and ``GET /api/v1/stats/live`` in
:mod:`~fleetstream.api.routes.query_live`, whose routes this module's router includes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Query, Request, Response

from fleetstream.api.deps import StoreDep
from fleetstream.api.routes import query_compute, query_live

# Re-exported: the windows, devices, alerts, live and ops routes import them from here.
from fleetstream.api.routes.query_compute import COMPUTE_METRICS as COMPUTE_METRICS
from fleetstream.api.routes.query_live import ingest_counters as ingest_counters
from fleetstream.api.routes.query_params import AGGS as AGGS
from fleetstream.api.routes.query_params import DEFAULT_AGGS as DEFAULT_AGGS
from fleetstream.api.routes.query_params import DEFAULT_POINTS as DEFAULT_POINTS
from fleetstream.api.routes.query_params import HOUR_US as HOUR_US
from fleetstream.api.routes.query_params import agg_param as agg_param
from fleetstream.api.routes.query_params import bucket_param as bucket_param
from fleetstream.api.routes.query_params import split_values as split_values
from fleetstream.api.routes.query_params import time_param as time_param
from fleetstream.domain.buckets import MAX_BUCKETS, Buckets, format_bucket, zone
from fleetstream.domain.timeutil import MIN_US, us_to_iso
from fleetstream.errors import InvalidInput
from fleetstream.ports import MetricsQuery, SeriesQuery

router = APIRouter(tags=["query"])


@router.get("/api/v1/metrics", summary="Aggregates of readings between two times, per sensor")
async def get_metrics(
    request: Request,
    store: StoreDep,
    sensor: Annotated[list[str] | None, Query(description="sensor name(s); all when absent")] = None,
    device_id: Annotated[
        list[str] | None, Query(description="device id(s); the whole fleet when absent")
    ] = None,
    from_: Annotated[
        str | None, Query(alias="from", description="start, inclusive (default: `to` − 1 h)")
    ] = None,
    to: Annotated[str | None, Query(description="end, exclusive (default: now)")] = None,
    agg: Annotated[str, Query(description=f"comma-separated, among {', '.join(AGGS)}")] = DEFAULT_AGGS,
) -> Response:
    """`count`, `min`, `max`, `avg` (= `mean`), `sum`, `stddev` (sample), `p50`, `p95`, `p99` of the
    readings with event time in `[from, to)`. Times are RFC 3339 or `YYYY-MM-DD HH:MM:SS` (UTC).
    Returns `{"from", "to", "metrics": {"<sensor>": {"<agg>": value}}}`; a sensor asked for with no
    data has `count` 0 and null aggregates."""
    runtime = request.app.state.runtime
    end = time_param("to", to, runtime.clock.now_us())
    start = time_param("from", from_, max(end - HOUR_US, MIN_US))
    if start > end:
        msg = f"from ({us_to_iso(start)}) is after to ({us_to_iso(end)})"
        raise InvalidInput(msg)
    query = MetricsQuery(start, end, agg_param(agg), split_values(sensor), split_values(device_id))
    metrics = await store.query_metrics(query)
    body = {"from": us_to_iso(start), "to": us_to_iso(end), "metrics": metrics}
    return Response(msgspec.json.encode(body), media_type="application/json")


_SERIES_EXAMPLE = {
    "from": "2024-03-30T00:00:00Z",
    "to": "2024-04-01T00:00:00Z",
    "bucket": "1d",
    "tz": "Europe/Amsterdam",
    "series": {
        "temperature": [
            {"t": "2024-03-30T00:00:00+01:00", "avg": 20.4, "max": 24.1},
            {"t": "2024-03-31T00:00:00+01:00", "avg": 21.2, "max": 25.0},
        ]
    },
}


@router.get(
    "/api/v1/series",
    summary="Aggregates per sensor and time bucket, for charts",
    responses={200: {"content": {"application/json": {"example": _SERIES_EXAMPLE}}}},
)
async def get_series(
    request: Request,
    store: StoreDep,
    sensor: Annotated[list[str] | None, Query(description="sensor name(s); all when absent")] = None,
    device_id: Annotated[
        list[str] | None, Query(description="device id(s); the whole fleet when absent")
    ] = None,
    from_: Annotated[
        str | None, Query(alias="from", description="start, inclusive (default: `to` − 1 h)")
    ] = None,
    to: Annotated[str | None, Query(description="end, exclusive (default: now)")] = None,
    bucket: Annotated[
        str | None,
        Query(description="bucket size: `500ms`, `10s`, `1m`, `1h30m`, `1d`, `7d`, or ISO 8601 `PT5M`"),
    ] = None,
    points: Annotated[
        str | None,
        Query(description=f"instead of `bucket`: at most this many buckets (1 to {MAX_BUCKETS:,})"),
    ] = None,
    agg: Annotated[str, Query(description=f"comma-separated, among {', '.join(AGGS)}")] = "avg",
    tz: Annotated[
        str | None, Query(description="IANA time zone of day buckets and of the times shown (default UTC)")
    ] = None,
) -> Response:
    """The aggregates of `agg` (as in `/api/v1/metrics`; default `avg`) of the readings with event
    time in `[from, to)`, per sensor and time bucket. Buckets under a day start on multiples of
    their size since the epoch (UTC); buckets of whole days start at midnight in `tz`, counted from
    Monday 2000-01-03 (so `7d` = weeks from Monday; a day is 23 h or 25 h when clocks change).
    Give `bucket`, or `points=N` to get the smallest of 1ms, 2ms, 5ms, ... 1s, 2s, 5s, 10s, 15s,
    30s, 1m, 2m, 5m, 10m, 15m, 30m, 1h, 2h, 3h, 6h, 12h, 1d, 2d, 7d, 14d, 30d, ... giving at most N
    buckets over the range; neither means `points=500`. At most 10,000 buckets per sensor.
    Returns `{"from", "to", "bucket", "tz", "series": {"<sensor>": [{"t", "<agg>": value}]}}`:
    only buckets holding data, in time order; `t` is the bucket's start, RFC 3339 with `Z` in UTC,
    else with the zone's offset. The first and last bucket may reach outside `[from, to)`; only
    readings inside count."""
    runtime = request.app.state.runtime
    end = time_param("to", to, runtime.clock.now_us())
    start = time_param("from", from_, max(end - HOUR_US, MIN_US))
    if start >= end:
        msg = f"from ({us_to_iso(start)}) must be before to ({us_to_iso(end)})"
        raise InvalidInput(msg)
    aggs = agg_param(agg)
    tz_name = (tz or "").strip() or "UTC"
    try:
        zone(tz_name)
    except ValueError as exc:
        msg = f"tz: {exc}"
        raise InvalidInput(msg) from None
    buckets = Buckets(bucket_param(bucket, points, start, end, tz_name), tz_name)
    query = SeriesQuery(
        start, end, buckets.width, aggs, split_values(sensor), split_values(device_id), tz_name
    )
    series = await store.query_series(query)
    body = {
        "from": us_to_iso(start),
        "to": us_to_iso(end),
        "bucket": format_bucket(buckets.width),
        "tz": tz_name,
        "series": {name: [{**p, "t": buckets.show(p["t"])} for p in rows] for name, rows in series.items()},
    }
    return Response(msgspec.json.encode(body), media_type="application/json")


# Included after the routes above, so the routes keep their order (in /docs too).
router.include_router(query_compute.router)
router.include_router(query_live.router)
