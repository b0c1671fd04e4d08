"""Queries: ``GET /api/v1/metrics``, ``GET /api/v1/series``, ``POST /compute/metrics``,
``GET /api/v1/stats/live``."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from fleetstream.api.deps import EngineDep, StoreDep
from fleetstream.domain.buckets import MAX_BUCKETS, Buckets, format_bucket, parse_bucket, pick_bucket, zone
from fleetstream.domain.timeutil import MIN_US, parse_time, us_to_iso
from fleetstream.errors import InvalidInput
from fleetstream.ingest.devicetypes import known_sensors
from fleetstream.ports import MetricsQuery, SeriesQuery

router = APIRouter(tags=["query"])

AGGS = ("count", "min", "max", "avg", "mean", "sum", "stddev", "p50", "p95", "p99")
DEFAULT_AGGS = "count,min,max,avg"
HOUR_US = 3_600_000_000
DEFAULT_POINTS = 500


def split_values(values: list[str] | None) -> tuple[str, ...]:
    """Repeatable and comma-separated query values, flattened, order kept, blanks dropped."""
    out: dict[str, None] = {}
    for value in values or ():
        for part in value.split(","):
            if part.strip():
                out[part.strip()] = None
    return tuple(out)


def time_param(name: str, text: str | None, default: int) -> int:
    """A query-string time, or ``default`` when absent; 400 naming the parameter when bad."""
    if text is None or not text.strip():
        return default
    try:
        return parse_time(text.strip())
    except ValueError as exc:
        msg = f"{name}: {exc}"
        raise InvalidInput(msg) from None


def agg_param(text: str) -> tuple[str, ...]:
    """The aggregates of an ``agg`` parameter; 400 listing the unknown ones."""
    aggs = split_values([text])
    unknown = [a for a in aggs if a not in AGGS]
    if unknown or not aggs:
        msg = f"agg: unknown aggregate(s) {', '.join(unknown) or '(none given)'}; expected {', '.join(AGGS)}"
        raise InvalidInput(msg)
    return aggs


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


def bucket_param(bucket: str | None, points: str | None, start: int, end: int, tz: str) -> int:
    """The bucket size in microseconds from ``bucket`` or ``points`` (default 500 points); 400 when
    bad, when both are given, or when ``bucket`` makes more than 10,000 buckets over the range."""
    bucket, points = (bucket or "").strip(), (points or "").strip()
    if bucket and points:
        msg = "give either bucket or points, not both"
        raise InvalidInput(msg)
    if bucket:
        try:
            width = parse_bucket(bucket)
            count = Buckets(width, tz).count(start, end)
        except ValueError as exc:
            msg = f"bucket: {exc}"
            raise InvalidInput(msg) from None
        if count > MAX_BUCKETS:
            msg = (
                f"bucket: {format_bucket(width)} makes {count:,} buckets from {us_to_iso(start)} to "
                f"{us_to_iso(end)}, more than {MAX_BUCKETS:,}: use points= or a larger bucket"
            )
            raise InvalidInput(msg)
        return width
    if points and not (re.fullmatch("[0-9]{1,9}", points) and 1 <= int(points) <= MAX_BUCKETS):
        msg = f"points: expected a whole number from 1 to {MAX_BUCKETS:,}, got '{points}'"
        raise InvalidInput(msg)
    try:
        return pick_bucket(start, end, int(points or DEFAULT_POINTS), tz)
    except ValueError as exc:
        msg = f"points: {exc}"
        raise InvalidInput(msg) from None


COMPUTE_METRICS = {"count": "count", "average": "avg", "mean": "avg", "min": "min", "max": "max"}


@router.post(
    "/compute/metrics",
    summary="Metrics of sensors between two times (compatible request and response)",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"result": {"temperature": {"count": 61, "min": 2}}, "errors": []}
                }
            }
        },
        400: {"description": "No valid sensor remains, or `from`/`to` missing or bad: `result` is `{}`."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object"},
                    "example": {
                        "temperature": ["count", "min", "max", "average"],
                        "from": "2023-03-28 20:00:00",
                        "to": "2023-03-28 21:00:00",
                    },
                }
            },
        }
    },
)
async def compute_metrics(request: Request, store: StoreDep, engine: EngineDep) -> JSONResponse:
    """Keys are sensor names whose values list metrics among `count`, `average`, `mean`, `min`,
    `max`; `from` and `to` are `YYYY-MM-DD HH:MM:SS` (UTC; RFC 3339 also accepted), both inclusive.
    Unknown metrics and keys are reported in `errors` and left out of `result`."""
    errors: list[str] = []
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        return _compute_error([f"The request body is not valid JSON: {exc}"])
    if not isinstance(body, dict):
        return _compute_error(["The request body must be a JSON object"])
    bounds: dict[str, int] = {}
    for key in ("from", "to"):
        raw = body.get(key)
        if raw is None:
            errors.append(f'Missing {key} in the request body (expected "YYYY-MM-DD HH:MM:SS")')
        elif not isinstance(raw, str):
            errors.append(f'Invalid {key}: expected "YYYY-MM-DD HH:MM:SS", got {raw!r}')
        else:
            try:
                bounds[key] = parse_time(raw.strip())
            except ValueError as exc:
                errors.append(f"Invalid {key}: {exc}")
    if len(bounds) < 2:
        return _compute_error(errors)
    if bounds["from"] > bounds["to"]:
        return _compute_error([*errors, "Invalid range: from is after to"])
    known = known_sensors() | engine.sensors_seen
    wanted: dict[str, list[str]] = {}
    for key, value in body.items():
        if key in ("from", "to"):
            continue
        if key not in known:
            errors.append(f"Unexpected key {key} in the request body")
            continue
        if not isinstance(value, list):
            errors.append(f"Expected a list of metrics for the sensor {key}")
            continue
        metrics = []
        for metric in value:
            if isinstance(metric, str) and metric in COMPUTE_METRICS:
                metrics.append(metric)
            else:
                errors.append(f"Unexpected metric {metric} to compute for the sensor {key}")
        if metrics:
            wanted[key] = metrics
        elif not value:
            errors.append(f"No metric to compute for the sensor {key}")
    if not wanted:
        return _compute_error(errors)
    aggs = tuple(dict.fromkeys(COMPUTE_METRICS[m] for ms in wanted.values() for m in ms))
    query = MetricsQuery(bounds["from"], bounds["to"], aggs, tuple(wanted), end_inclusive=True)
    rows = await store.query_metrics(query)
    result = {
        sensor: {metric: rows[sensor][COMPUTE_METRICS[metric]] for metric in metrics}
        for sensor, metrics in wanted.items()
    }
    return JSONResponse({"result": result, "errors": errors})


def _compute_error(errors: list[str]) -> JSONResponse:
    return JSONResponse({"result": {}, "errors": errors}, 400)


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
