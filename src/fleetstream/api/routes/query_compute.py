"""``POST /compute/metrics``: metrics of sensors between two times, in a compatible request and response.

Unlike the other query routes, it reads a JSON body and reports what it could not use in an
``errors`` list beside the ``result``, with a 400 only when nothing usable remains.
"""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from fleetstream.api.deps import EngineDep, StoreDep
from fleetstream.domain.timeutil import parse_time
from fleetstream.ingest.devicetypes import known_sensors
from fleetstream.ports import MetricsQuery

# No tags of its own: query.py includes it in its router, which tags every route "query".
router = APIRouter()

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
