"""Live streams: SSE of readings, and the per-device message stream of the seed-compatible endpoint.

Every stream is one subscriber of the hub (one broadcast, not one query per
client) with a bounded queue: a slow client skips messages (counted and told),
a stalled one is dropped, and neither slows ingest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse

from fleetstream.api.deps import HubDep
from fleetstream.api.routes.query import split_values
from fleetstream.domain.records import DEVICE_ID_RULE, DeviceMessage, is_valid_device_id
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.engine.fanout import Subscriber
from fleetstream.errors import InvalidReading

router = APIRouter(tags=["live"])
T = TypeVar("T")

KEEPALIVE_S = 15.0
_encode = msgspec.json.Encoder().encode
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def reading_events(sensors: set[str]) -> Callable[[DeviceMessage], list[dict[str, Any]]]:
    """Message → one JSON object per reading (of the wanted sensors)."""

    def render(message: DeviceMessage) -> list[dict[str, Any]]:
        return [
            {
                "device_id": r.device_id,
                "ts": us_to_iso(r.ts),
                "sensor": r.sensor,
                "value": r.value,
                "unit": r.unit,
                "device_type": r.device_type,
            }
            for r in message.readings
            if not sensors or r.sensor in sensors
        ]

    return render


def message_event(message: DeviceMessage) -> dict[str, Any]:
    """A device message as the seed's event object: type, timestamp, then its values."""
    event: dict[str, Any] = {"type": message.kind, "timestamp": us_to_iso(message.ts)}
    if message.kind == "telemetry":
        event["device_type"] = message.device_type
    for r in message.readings:
        event[r.sensor] = r.value
    return event


async def _drain(sub: Subscriber[T], first: T, most: int = 500) -> list[T]:
    batch = [first]
    while len(batch) < most and not sub.queue.empty():
        batch.append(sub.queue.get_nowait())
    return batch


async def follow(
    request: Request,
    sub: Subscriber[T],
    frame: Callable[[list[T]], bytes],
    skipped: Callable[[int], bytes],
    hello: bytes,
    keepalive: bytes,
) -> AsyncIterator[bytes]:
    told = 0
    try:
        yield hello
        while True:
            try:
                message = await asyncio.wait_for(sub.get(), KEEPALIVE_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield keepalive
                continue
            if message is None:
                return
            chunk = frame(await _drain(sub, message))
            if sub.skipped > told:
                chunk = skipped(sub.skipped - told) + chunk
                told = sub.skipped
            if chunk:
                yield chunk
    finally:
        sub.close()


def sse_response(
    request: Request, sub: Subscriber[T], event: str, render: Callable[[T], Iterable[Any]]
) -> StreamingResponse:
    """Server-Sent Events of a subscription: ``event: <event>`` with the JSON of each object
    ``render`` gives for a record, ``event: skipped`` with how many a slow client missed, and a
    keep-alive comment every 15 s."""
    head = b"event: " + event.encode() + b"\ndata: "

    def frame(records: list[T]) -> bytes:
        return b"".join(head + _encode(obj) + b"\n\n" for record in records for obj in render(record))

    body = follow(
        request,
        sub,
        frame,
        lambda n: b'event: skipped\ndata: {"skipped": %d}\n\n' % n,
        b"retry: 2000\n: connected\n\n",
        b": keep-alive\n\n",
    )
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)


@router.get(
    "/api/v1/stream",
    summary="Server-Sent Events of readings as they are acknowledged",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream_readings(
    request: Request,
    hub: HubDep,
    device_id: Annotated[list[str] | None, Query(description="only these devices (repeatable)")] = None,
    sensor: Annotated[list[str] | None, Query(description="only these sensors (repeatable)")] = None,
) -> StreamingResponse:
    """Each event is `event: reading` with `data: {"device_id", "ts", "sensor", "value", "unit",
    "device_type"}`. A client too slow to keep up gets `event: skipped` with the number of readings
    it missed; a keep-alive comment comes every 15 s."""
    devices = split_values(device_id)
    return sse_response(
        request, hub.subscribe(devices or None), "reading", reading_events(set(split_values(sensor)))
    )


@router.post(
    "/api/devices/{device_id:path}/messages",
    summary="Follow one device's messages (NDJSON stream, or SSE with Accept: text/event-stream)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "application/x-ndjson": {
                    "example": '{"id": 0, "event": {"type": "heartbeat", "timestamp": '
                    '"2023-03-28T20:04:22Z", "cpu_usage": 79.12, "mem_usage": 10.75}}'
                },
                "text/event-stream": {},
            }
        },
        422: {"description": "The id breaks the device id rule."},
    },
)
async def follow_device(
    request: Request,
    hub: HubDep,
    device_id: str = Path(description=f"the device to follow; {DEVICE_ID_RULE}"),
) -> StreamingResponse:
    """One line per device message (not per reading): `{"id": n, "event": {"type", "timestamp",
    ...values}}`, `id` counting from 0 for this subscription. Every client following a device gets
    every message. A device not seen yet is fine: the stream starts when it first sends. With
    `Accept: text/event-stream` the same JSON objects come as Server-Sent Events."""
    if not is_valid_device_id(device_id):
        msg = f'device_id: "{device_id}" is not a valid device id ({DEVICE_ID_RULE})'
        raise InvalidReading(msg)
    sse = "text/event-stream" in request.headers.get("accept", "")
    counter = 0

    def frame(messages: list[DeviceMessage]) -> bytes:
        nonlocal counter
        lines = []
        for m in messages:
            line = _encode({"id": counter, "event": message_event(m)})
            counter += 1
            lines.append(b"data: " + line + b"\n\n" if sse else line + b"\n")
        return b"".join(lines)

    def skipped(n: int) -> bytes:
        notice = _encode({"skipped": n})
        return b"event: skipped\ndata: " + notice + b"\n\n" if sse else b""

    sub = hub.subscribe([device_id])
    hello = b"retry: 2000\n: following " + device_id.encode() + b"\n\n" if sse else b""
    keepalive = b": keep-alive\n\n" if sse else b""  # a blank NDJSON line would break line parsers
    body = follow(request, sub, frame, skipped, hello, keepalive)
    media = "text/event-stream" if sse else "application/x-ndjson"
    return StreamingResponse(body, media_type=media, headers=SSE_HEADERS)
