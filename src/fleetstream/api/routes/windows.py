"""Event-time windows: ``GET /api/v1/windows`` (stored) and ``GET /api/v1/stream/windows`` (live SSE)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from fleetstream.api.deps import EngineDep, StoreDep
from fleetstream.api.routes.live import sse_response
from fleetstream.api.routes.query import HOUR_US, split_values, time_param
from fleetstream.domain.timeutil import MIN_US, format_duration, parse_duration, us_to_iso
from fleetstream.domain.windows import ALL_DEVICES, WindowAggregate
from fleetstream.engine.pipeline import Engine
from fleetstream.errors import InvalidInput
from fleetstream.ports import WindowQuery

router = APIRouter(tags=["windows"])
_encode = msgspec.json.Encoder().encode


def window_json(w: WindowAggregate) -> dict[str, Any]:
    """A window as the API shows it: times in RFC 3339, size as text."""
    return {
        "sensor": w.sensor,
        "device_id": None if w.device_id == ALL_DEVICES else w.device_id,
        "size": format_duration(w.size_us),
        "start": us_to_iso(w.start),
        "end": us_to_iso(w.end),
        "count": w.count,
        "sum": w.sum,
        "mean": w.mean,
        "min": w.min,
        "max": w.max,
        "stddev": w.stddev,
        "first": w.first,
        "last": w.last,
        "first_ts": us_to_iso(w.first_ts),
        "last_ts": us_to_iso(w.last_ts),
        "p50": w.quantile(0.5),
        "p95": w.quantile(0.95),
        "p99": w.quantile(0.99),
        "version": w.version,
    }


def window_size(engine: Engine, size: str | None) -> int:
    """The size asked for (default: the smallest); 400 naming the sizes configured."""
    sizes = engine.stream.window_sizes_us
    if size is None:
        return sizes[0]
    try:
        us = parse_duration(size)
    except ValueError as exc:
        msg = f"size: {exc}"
        raise InvalidInput(msg) from None
    if us not in sizes:
        known = ", ".join(format_duration(s) for s in sizes)
        msg = f"size: no {size} windows are kept; the sizes are {known} (see --window)"
        raise InvalidInput(msg)
    return us


@router.get("/api/v1/windows", summary="Closed event-time windows (final or newest version)")
async def get_windows(
    request: Request,
    store: StoreDep,
    engine: EngineDep,
    sensor: Annotated[list[str] | None, Query(description="sensor name(s); all when absent")] = None,
    device_id: Annotated[
        str | None, Query(description="one device's windows; the whole fleet's when absent")
    ] = None,
    size: Annotated[str | None, Query(description="window size, e.g. 10s or 1m (default: smallest)")] = None,
    from_: Annotated[
        str | None, Query(alias="from", description="windows starting at or after (default: `to` − 1 h)")
    ] = None,
    to: Annotated[str | None, Query(description="windows starting before (default: now)")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000, description="most windows returned")] = 10_000,
) -> Response:
    """Tumbling event-time windows that the watermark has closed, oldest first, each with `count`,
    `sum`, `mean`, `min`, `max`, `stddev`, `first`/`last` (by event time), `p50`/`p95`/`p99` (within
    1% relative error) and `version` (1 when first emitted, +1 for each update by a reading that
    came late but within the allowed lateness). Readings later than that are not in any window:
    they are counted in `late` of `/api/v1/stats/live`. See docs/stream.md."""
    size_us = window_size(engine, size)
    end = time_param("to", to, request.app.state.runtime.clock.now_us())
    start = time_param("from", from_, max(end - HOUR_US, MIN_US))
    if start > end:
        msg = f"from ({us_to_iso(start)}) is after to ({us_to_iso(end)})"
        raise InvalidInput(msg)
    query = WindowQuery(size_us, start, end, split_values(sensor), device_id or ALL_DEVICES, limit)
    windows = await store.query_windows(query)
    body = {
        "from": us_to_iso(start),
        "to": us_to_iso(end),
        "size": format_duration(size_us),
        "device_id": device_id,
        "windows": [window_json(w) for w in windows],
    }
    return Response(_encode(body), media_type="application/json")


@router.get(
    "/api/v1/stream/windows",
    summary="Server-Sent Events of windows as they close (and of their late updates)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_windows(
    request: Request,
    engine: EngineDep,
    sensor: Annotated[list[str] | None, Query(description="only these sensors (repeatable)")] = None,
    device_id: Annotated[
        list[str] | None, Query(description="these devices' windows; the fleet's when absent")
    ] = None,
    size: Annotated[str | None, Query(description="only this size, e.g. 10s")] = None,
) -> StreamingResponse:
    """Each event is `event: window` with the JSON of `/api/v1/windows`; a new `version` of a window
    already sent is an update. `device_id=*` follows every device's windows."""
    sensors = set(split_values(sensor))
    asked = set(split_values(device_id))
    every_device = "*" in asked  # every device's own windows
    devices = asked - {"*"} if asked else {ALL_DEVICES}  # none asked: the fleet's windows
    size_us = window_size(engine, size) if size else None

    def accept(w: WindowAggregate) -> bool:
        if size_us is not None and w.size_us != size_us:
            return False
        if sensors and w.sensor not in sensors:
            return False
        return w.device_id in devices or (every_device and w.device_id != ALL_DEVICES)

    return sse_response(request, engine.windows.subscribe(accept), "window", lambda w: [window_json(w)])
