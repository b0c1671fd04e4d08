"""Devices and their twins: list, one twin (now or as it was), its event history, live device events."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from fleetstream.api.deps import EngineDep, StoreDep
from fleetstream.api.routes.live import sse_response
from fleetstream.api.routes.models import failure_risk
from fleetstream.api.routes.query import split_values, time_param
from fleetstream.domain.records import DEVICE_ID_RULE, is_valid_device_id
from fleetstream.domain.shadow import Document, delta, pick
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.engine.pipeline import Engine
from fleetstream.errors import InvalidInput, InvalidReading, NotFound
from fleetstream.ports import EventQuery, Store

router = APIRouter(tags=["devices"])
_encode = msgspec.json.Encoder().encode
STATUSES = ("online", "idle", "offline")


def _iso(us: int | None) -> str | None:
    return None if us is None else us_to_iso(us)


def twin_json(t: DeviceTwin) -> dict[str, Any]:
    """A twin as the API shows it: times in RFC 3339."""
    location = None
    if t.location is not None:
        lat, lon, ts = t.location
        location = {"lat": lat, "lon": lon, "ts": us_to_iso(ts)}
    return {
        "device_id": t.device_id,
        "device_type": t.device_type,
        "status": t.status,
        "first_seen": _iso(t.first_seen),
        "last_seen": _iso(t.last_seen if t.first_seen is not None else None),
        "sensors": {
            name: {"value": value, "ts": us_to_iso(ts)} for name, (value, ts) in sorted(t.sensors.items())
        },
        "location": location,
        "messages": t.messages,
        "readings": t.readings,
        "last_startup": _iso(t.last_startup),
        "last_heartbeat": _iso(t.last_heartbeat),
        "heartbeat": t.heartbeat,
        "version": t.version,
        "shadow": shadow_json(t),
    }


def _times(metadata: Document) -> Document:
    return {k: _times(v) if isinstance(v, dict) else us_to_iso(v) for k, v in metadata.items()}


def shadow_json(t: DeviceTwin) -> dict[str, Any]:
    """The device shadow: documents, `delta`, when each leaf was last set, and the versions."""
    diff = delta(t.desired, t.reported)
    return {
        "desired": t.desired,
        "reported": t.reported,
        "delta": diff,
        "metadata": {
            "desired": _times(t.desired_meta),
            "reported": _times(t.reported_meta),
            "delta": _times(pick(t.desired_meta, diff)),
        },
        "desired_version": t.desired_version,
        "reported_version": t.reported_version,
    }


def event_json(e: DeviceEvent) -> dict[str, Any]:
    """A device event as the API shows it."""
    return {
        "device_id": e.device_id,
        "seq": e.seq,
        "ts": us_to_iso(e.ts),
        "type": e.type,
        "payload": e.payload,
    }


def checked_id(device_id: str) -> str:
    """The device id of a path, or a 422 naming the rule."""
    if not is_valid_device_id(device_id):
        msg = f'device_id: "{device_id}" is not a valid device id ({DEVICE_ID_RULE})'
        raise InvalidReading(msg)
    return device_id


async def current_twin(engine: Engine, store: Store, device_id: str) -> DeviceTwin:
    """The twin now: from memory when resident, else as stored; 404 when the device is unknown."""
    twin = engine.processors.twins.get(device_id)
    if twin is None:
        stored = await store.load_twins([device_id])
        twin = stored[0] if stored else None
    if twin is None:
        msg = f"no device {device_id!r} has sent anything yet"
        raise NotFound(msg)
    return twin


@router.get("/api/v1/devices", summary="Devices and their twins, filtered and paginated")
async def list_devices(
    store: StoreDep,
    engine: EngineDep,
    type: Annotated[str | None, Query(description="device type, e.g. Thermostat")] = None,
    status: Annotated[str | None, Query(description="online, idle or offline")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    offset: Annotated[int, Query(ge=0, description="devices to skip (by id)")] = 0,
) -> Response:
    """Twins ordered by device id: `{"total", "limit", "offset", "devices": [...]}`, each in its
    current state. Filtering and paging run on the stored twins, which are brought up to date
    (at most once a second) before the query."""
    if status is not None and status not in STATUSES:
        msg = f"status: expected one of {', '.join(STATUSES)}, got {status!r}"
        raise InvalidInput(msg)
    await engine.store_twins()  # devices first heard since the last checkpoint are listed too
    total, page = await store.list_twins(type, status, limit, offset)
    resident = engine.processors.twins
    twins = [resident.get(t.device_id) or t for t in page]
    body = {"total": total, "limit": limit, "offset": offset, "devices": [twin_json(t) for t in twins]}
    return Response(_encode(body), media_type="application/json")


@router.get(
    "/api/v1/devices/{device_id}",
    summary="One device's twin (ETag = its version); as it was at a time with ?as_of=",
    responses={404: {"description": "No such device."}, 304: {"description": "Not modified."}},
)
async def get_device(
    request: Request,
    store: StoreDep,
    engine: EngineDep,
    device_id: str = Path(description=f"the device; {DEVICE_ID_RULE}"),
    as_of: Annotated[
        str | None, Query(description="rebuild the twin as it was at this time, from its event log")
    ] = None,
) -> Response:
    """The device's state: type, status, first/last seen, last value and its event time per sensor
    (the newest event time wins), location, counters and `version` (the number of device events
    applied) and `shadow` (desired, reported, delta, their metadata and versions: docs/shadow.md).
    `If-None-Match` with the ETag answers 304 while nothing changed."""
    checked_id(device_id)
    if as_of is not None:
        at = time_param("as_of", as_of, 0)
        twin = await twin_as_of(engine, store, device_id, at)
        return Response(_encode(twin_json(twin)), media_type="application/json")
    twin = await current_twin(engine, store, device_id)
    etag = f'"{twin.version}-{twin.readings}"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    risk = await failure_risk(engine, device_id)  # not an event: no version
    body = {**twin_json(twin), "failure_risk": risk}
    return Response(_encode(body), media_type="application/json", headers={"ETag": etag})


async def twin_as_of(engine: Engine, store: Store, device_id: str, at: int) -> DeviceTwin:
    """The twin rebuilt from its stored events and readings with event time up to ``at``."""
    await current_twin(engine, store, device_id)  # 404 for an unknown device
    events: list[DeviceEvent] = []
    after = 0
    while True:
        page = await store.device_events(EventQuery(device_id, end=at + 1, after_seq=after, limit=10_000))
        events += page
        if len(page) < 10_000:
            break
        after = page[-1].seq
    rows = await store.device_rows(device_id, at)
    if not events and not len(rows):
        msg = f"device {device_id!r} had not sent anything by {us_to_iso(at)}"
        raise NotFound(msg)
    return DeviceTwin.replay(device_id, events, rows)


@router.get("/api/v1/devices/{device_id}/events", summary="One device's event history, paginated")
async def get_device_events(
    store: StoreDep,
    engine: EngineDep,
    device_id: str = Path(description=f"the device; {DEVICE_ID_RULE}"),
    from_: Annotated[str | None, Query(alias="from", description="event time, inclusive")] = None,
    to: Annotated[str | None, Query(description="event time, exclusive")] = None,
    type: Annotated[list[str] | None, Query(description="only these event types")] = None,
    after_seq: Annotated[int, Query(ge=0, description="events after this sequence number (paging)")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000, description="page size")] = 100,
) -> Response:
    """Events oldest first: `{"events": [{"seq", "ts", "type", "payload"}], "next_after_seq"}`; pass
    `next_after_seq` back as `after_seq` for the next page (null at the end). Types: `registered`,
    `type_changed`, `startup`, `message` (another reading-less message), `heartbeat`,
    `status_changed`, `location_changed`, `desired_changed`, `reported_changed` (payload
    `{"patch", "version"}`: a shadow update, docs/shadow.md)."""
    checked_id(device_id)
    await current_twin(engine, store, device_id)
    start = time_param("from", from_, 0) if from_ else None
    end = time_param("to", to, 0) if to else None
    query = EventQuery(device_id, start, end, split_values(type), after_seq, limit + 1)
    events = await store.device_events(query)
    more = len(events) > limit
    events = events[:limit]
    body = {
        "device_id": device_id,
        "events": [event_json(e) for e in events],
        "next_after_seq": events[-1].seq if more else None,
    }
    return Response(_encode(body), media_type="application/json")


@router.get(
    "/api/v1/stream/events",
    summary="Server-Sent Events of device events as they happen",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_events(
    request: Request,
    engine: EngineDep,
    device_id: Annotated[list[str] | None, Query(description="only these devices (repeatable)")] = None,
    type: Annotated[list[str] | None, Query(description="only these event types")] = None,
) -> StreamingResponse:
    """Each event is `event: device_event` with `{"device_id", "seq", "ts", "type", "payload"}`."""
    devices = set(split_values(device_id))
    types = set(split_values(type))

    def accept(e: DeviceEvent) -> bool:
        return (not devices or e.device_id in devices) and (not types or e.type in types)

    return sse_response(request, engine.events.subscribe(accept), "device_event", lambda e: [event_json(e)])
