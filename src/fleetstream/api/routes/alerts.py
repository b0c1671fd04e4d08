"""Alerts: list and filter, one alert, acknowledge, and a live stream of their changes."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from fleetstream.api.deps import EngineDep, StoreDep
from fleetstream.api.routes.live import sse_response
from fleetstream.api.routes.query import split_values, time_param
from fleetstream.domain.alerts import STATES, AlertChange
from fleetstream.errors import InvalidInput, MalformedBody, NotFound
from fleetstream.ports import AlertQuery

router = APIRouter(tags=["alerts"])
_encode = msgspec.json.Encoder().encode


def _one_of(name: str, value: str | None, allowed: tuple[str, ...] | None = None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or (allowed is not None and value not in allowed):
        expected = f"one of {', '.join(allowed)}" if allowed else "a non-empty value"
        msg = f"{name}: expected {expected}, got {value!r}"
        raise InvalidInput(msg)
    return value


@router.get(
    "/api/v1/alerts",
    summary="Alerts, newest opened first, filtered and paginated",
    responses={400: {"description": "A bad filter (unknown state, unreadable time)."}},
)
async def list_alerts(
    store: StoreDep,
    engine: EngineDep,
    state: Annotated[str | None, Query(description="active, acknowledged or cleared")] = None,
    device_id: Annotated[str | None, Query(description="only this device")] = None,
    rule_id: Annotated[str | None, Query(description="only this rule")] = None,
    from_: Annotated[str | None, Query(alias="from", description="opened at or after (RFC 3339)")] = None,
    to: Annotated[str | None, Query(description="opened before (RFC 3339)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    offset: Annotated[int, Query(ge=0, description="alerts to skip")] = 0,
) -> Response:
    """`{"total", "limit", "offset", "alerts": [{"id", "device_id", "rule_id", "severity", "state",
    "opened_at", "acknowledged_at", "acknowledged_by", "ack_note", "cleared_at", "first_value",
    "last_value", "message"}]}`. Alerts opened in the last second may not be listed yet (they are
    stored with the other derived records, every second)."""
    start = time_param("from", from_, 0) if from_ is not None else None
    end = time_param("to", to, 0) if to is not None else None
    if start is not None and end is not None and end < start:
        msg = "to: must not be before from"
        raise InvalidInput(msg)
    query = AlertQuery(
        _one_of("state", state, STATES),
        _one_of("device_id", device_id),
        _one_of("rule_id", rule_id),
        start,
        end,
        limit,
        offset,
    )
    await engine.flush_alerts()
    total, page = await store.query_alerts(query)
    body = {"total": total, "limit": limit, "offset": offset, "alerts": [a.as_json() for a in page]}
    return Response(_encode(body), media_type="application/json")


@router.get("/api/v1/alerts/{alert_id:path}/ack", include_in_schema=False)
async def ack_get(alert_id: str) -> Response:
    """A GET of the ack URL is a mistake: say so (405) rather than look up an alert named ``.../ack``."""
    return Response(
        _encode({"error": {"code": "method_not_allowed", "message": "use POST", "details": None}}),
        status_code=405,
        media_type="application/json",
        headers={"Allow": "POST"},
    )


@router.post(
    "/api/v1/alerts/{alert_id:path}/ack",
    summary="Acknowledge an open alert (who and why)",
    responses={
        404: {"description": "No such alert."},
        409: {"description": "The alert is cleared."},
        422: {"description": "No `by`."},
    },
)
async def acknowledge(request: Request, engine: EngineDep, alert_id: str = Path()) -> Response:
    """Body `{"by": "who", "note": "why"}` (`note` optional). The alert's state becomes
    `acknowledged` until its rule clears it; acknowledging again replaces who and why."""
    try:
        body: Any = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        msg = f"the body is not JSON: {exc}"
        raise MalformedBody(msg) from None
    by = body.get("by") if isinstance(body, dict) else None
    note = body.get("note") if isinstance(body, dict) else None
    if not isinstance(by, str) or not by.strip():
        msg = 'by: give who acknowledges, e.g. {"by": "ana", "note": "on my way"}'
        raise InvalidInput(msg, details=[{"field": "by", "error": "required text"}])
    if note is not None and not isinstance(note, str):
        msg = "note: expected text"
        raise InvalidInput(msg)
    if "\0" in by or (note is not None and "\0" in note):  # PostgreSQL text cannot hold one
        msg = "by, note: NUL characters (\\u0000) are not allowed"
        raise InvalidInput(msg)
    alert = await engine.rules.acknowledge(alert_id, by.strip(), note)
    return Response(_encode(alert.as_json()), media_type="application/json")


@router.get(
    "/api/v1/alerts/{alert_id:path}", summary="One alert", responses={404: {"description": "No such alert."}}
)
async def get_alert(store: StoreDep, engine: EngineDep, alert_id: str = Path()) -> Response:
    """The alert, as in the list. An open alert is shown as it is now, even before it is stored."""
    await engine.flush_alerts()
    alert = engine.processors.rules.alerts.get(alert_id) or await store.get_alert(alert_id)
    if alert is None:
        msg = f"no alert with id {alert_id!r}"
        raise NotFound(msg)
    return Response(_encode(alert.as_json()), media_type="application/json")


@router.get(
    "/api/v1/stream/alerts",
    summary="Server-Sent Events of alerts as they open, escalate, are acknowledged and clear",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_alerts(
    request: Request,
    engine: EngineDep,
    device_id: Annotated[list[str] | None, Query(description="only these devices (repeatable)")] = None,
    rule_id: Annotated[list[str] | None, Query(description="only these rules (repeatable)")] = None,
) -> StreamingResponse:
    """Each event is `event: alert` with `{"event": "opened" | "escalated" | "acknowledged" |
    "cleared", "alert": {...}}` (the alert as `GET /api/v1/alerts/{id}` shows it)."""
    devices = set(split_values(device_id))
    rules = set(split_values(rule_id))

    def accept(c: AlertChange) -> bool:
        return (not devices or c.alert.device_id in devices) and (not rules or c.alert.rule_id in rules)

    def render(c: AlertChange) -> list[dict[str, Any]]:
        return [{"event": c.kind, "alert": c.alert.as_json()}]

    return sse_response(request, engine.alerts.subscribe(accept), "alert", render)
