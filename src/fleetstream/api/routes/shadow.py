"""The device shadow over HTTP: patch ``desired`` and ``reported``, read ``desired`` (long-poll, SSE).

Semantics (merge patch, versions, ``delta``) are in :mod:`fleetstream.domain.shadow`;
every change goes through :meth:`fleetstream.engine.pipeline.Engine.update_shadow`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from fleetstream.api.deps import EngineDep, StoreDep
from fleetstream.api.routes.devices import checked_id, current_twin, shadow_json
from fleetstream.api.routes.live import SSE_HEADERS, follow
from fleetstream.domain.events import DESIRED_CHANGED
from fleetstream.domain.records import DEVICE_ID_RULE
from fleetstream.domain.shadow import DESIRED, MAX_BYTES, REPORTED, Document, merge
from fleetstream.domain.twin import DeviceEvent, DeviceTwin
from fleetstream.engine.pipeline import Engine
from fleetstream.errors import InvalidInput, MalformedBody, PayloadTooLarge, UnsupportedMediaType

router = APIRouter(tags=["device shadow"])
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
MAX_WAIT_S = 60
_MEDIA = ("application/json", "application/merge-patch+json")
_PATCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "The device has not sent anything yet."},
    412: {"description": "If-Match is not the document's current version."},
    422: {"description": "Not a JSON object, or over the limits (depth 8, 8 KiB, keys of 1-128 characters)."},
}
_PATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {media: {"schema": {"type": "object", "example": {"interval_s": 5}}} for media in _MEDIA},
    }
}
DeviceId = Annotated[str, Path(description=f"the device; {DEVICE_ID_RULE}")]
IfMatch = Annotated[
    str | None,
    Header(
        description='the version this update is based on: `3`, `"3"` (the document\'s ETag), '
        'the twin\'s ETag `"42-1000"`, or `*`'
    ),
]


def _etag(version: int) -> str:
    return f'"{version}"'


def parse_if_match(value: str | None) -> int | tuple[int, int] | None:
    """The version an ``If-Match`` header names (``None`` for no header or ``*``).

    A document version (``3`` or its ETag ``"3"``) holds while that document is unchanged; the
    twin's ETag from ``GET /api/v1/devices/{id}`` (``"42-1000"``: version and readings) holds only
    while nothing at all changed on the twin, telemetry included.
    """
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if text.isdigit():
        return int(text)
    version, dash, readings = text.partition("-")
    if dash and version.isdigit() and readings.isdigit():
        return int(version), int(readings)
    msg = (
        f'If-Match: expected a document version such as 3, its ETag "3", or the twin\'s ETag '
        f'"42-1000", got {value!r}'
    )
    raise InvalidInput(msg)


async def _patch_body(request: Request) -> object:
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media not in _MEDIA:
        msg = f"content type {media!r}: send application/json or application/merge-patch+json"
        raise UnsupportedMediaType(msg)
    body = await request.body()
    if len(body) > 4 * MAX_BYTES:
        msg = f"a shadow update may take at most {MAX_BYTES} bytes of JSON, got {len(body)}"
        raise PayloadTooLarge(msg)
    try:
        return _decode(body)
    except msgspec.DecodeError as exc:
        msg = f"the body is not JSON: {exc}"
        raise MalformedBody(msg) from exc


async def _patch(
    engine: Engine, request: Request, device_id: str, section: str, if_match: str | None
) -> Response:
    checked_id(device_id)
    version = parse_if_match(if_match)
    patch = await _patch_body(request)
    twin, event = await engine.update_shadow(device_id, section, patch, version)
    body = {"device_id": device_id, "changed": event is not None, **shadow_json(twin)}
    now = twin.desired_version if section == DESIRED else twin.reported_version
    return Response(_encode(body), media_type="application/json", headers={"ETag": _etag(now)})


@router.patch(
    "/api/v1/devices/{device_id}/desired",
    summary="Change a device's desired state (JSON merge patch; If-Match for optimistic locking)",
    responses=_PATCH_RESPONSES,
    openapi_extra=_PATCH_BODY,
)
async def patch_desired(
    request: Request, engine: EngineDep, device_id: DeviceId, if_match: IfMatch = None
) -> Response:
    """A JSON merge patch (RFC 7396) of `desired`: keys replace, nested objects merge, `null`
    deletes. The answer is the whole shadow with `"changed"` (false when the patch changed
    nothing: no version, no event) and the new desired version as ETag. The change is durable
    and recorded as a `desired_changed` device event when the answer comes."""
    return await _patch(engine, request, device_id, DESIRED, if_match)


@router.patch(
    "/api/v1/devices/{device_id}/reported",
    summary="A device reports its state (JSON merge patch, as for desired)",
    responses=_PATCH_RESPONSES,
    openapi_extra=_PATCH_BODY,
)
async def patch_reported(
    request: Request, engine: EngineDep, device_id: DeviceId, if_match: IfMatch = None
) -> Response:
    """As `PATCH .../desired`, for `reported`; recorded as a `reported_changed` device event."""
    return await _patch(engine, request, device_id, REPORTED, if_match)


def desired_json(twin: DeviceTwin) -> dict[str, Any]:
    """What a device reads: its desired document, the version, and what it has still to do."""
    shadow = shadow_json(twin)
    return {
        "device_id": twin.device_id,
        "version": twin.desired_version,
        "desired": shadow["desired"],
        "delta": shadow["delta"],
        "metadata": shadow["metadata"]["desired"],
    }


def _desired_events(engine: Engine, device_id: str) -> Any:
    return engine.events.subscribe(lambda e: e.device_id == device_id and e.type == DESIRED_CHANGED)


@router.get(
    "/api/v1/devices/{device_id}/desired",
    summary="A device's desired state; long-poll with ?version=N&wait=S",
    responses={304: {"description": "No newer version within `wait` (or If-None-Match matched)."}},
)
async def get_desired(
    request: Request,
    engine: EngineDep,
    store: StoreDep,
    device_id: DeviceId,
    version: Annotated[
        int | None, Query(ge=0, description="the version the device has: answer once a newer one exists")
    ] = None,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_S, description="seconds to wait for it")] = 0,
) -> Response:
    """`{"device_id", "version", "desired", "delta", "metadata"}` with ETag `"<version>"`. With
    `version=N`, answers 200 as soon as the desired version is above N, or 304 (no body) after
    `wait` seconds without a change. `If-None-Match` with the ETag answers 304 at once."""
    checked_id(device_id)
    signal = engine.desired_changed
    waiter = signal.register(device_id)  # before reading: a change in between still wakes us
    try:
        twin = await current_twin(engine, store, device_id)
        deadline = time.monotonic() + wait
        while version is not None and twin.desired_version <= version:
            left = deadline - time.monotonic()
            if left <= 0:
                return Response(status_code=304, headers={"ETag": _etag(twin.desired_version)})
            try:
                await asyncio.wait_for(asyncio.shield(waiter), left)
            except TimeoutError:
                continue
            signal.discard(device_id, waiter)
            waiter = signal.register(device_id)
            twin = await current_twin(engine, store, device_id)
    finally:
        signal.discard(device_id, waiter)
    etag = _etag(twin.desired_version)
    if version is None and request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(_encode(desired_json(twin)), media_type="application/json", headers={"ETag": etag})


@router.get(
    "/api/v1/devices/{device_id}/desired/stream",
    summary="Server-Sent Events of a device's desired state: now, then at every change",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_desired(
    request: Request, engine: EngineDep, store: StoreDep, device_id: DeviceId
) -> StreamingResponse:
    """`event: desired` with `{"device_id", "version", "desired"}`: first the current document, then
    the new one after each change (a client that fell behind gets the newest)."""
    checked_id(device_id)
    sub = _desired_events(engine, device_id)
    try:
        twin = await current_twin(engine, store, device_id)
    except BaseException:
        sub.close()
        raise
    seen: list[Any] = [twin.desired_version, twin.desired]

    def render(event: DeviceEvent) -> bytes:
        number: int = event.payload["version"]
        if number <= seen[0]:
            return b""
        document: Document = merge(seen[1], event.payload["patch"])
        if number != seen[0] + 1:  # it missed some: take the twin's document when it is as new
            resident = engine.processors.twins.get(device_id)
            if resident is not None and resident.desired_version >= number:
                number, document = resident.desired_version, resident.desired
        seen[:] = [number, document]
        return _frame({"device_id": device_id, "version": number, "desired": document})

    def frame(events: list[DeviceEvent]) -> bytes:
        return b"".join(render(e) for e in events)

    hello = b"retry: 2000\n\n" + _frame({"device_id": device_id, "version": seen[0], "desired": seen[1]})
    body = follow(request, sub, frame, lambda n: b"", hello, b": keep-alive\n\n")
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


def _frame(data: dict[str, Any]) -> bytes:
    return b"event: desired\ndata: " + _encode(data) + b"\n\n"
