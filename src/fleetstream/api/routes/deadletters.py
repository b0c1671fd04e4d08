"""Dead letters: ``GET /api/v1/dead-letters``, what a source could not ingest and why."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query, Response

from fleetstream.api.deps import StoreDep
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.ports import DeadLetter

router = APIRouter(tags=["ingest"])


@router.get("/api/v1/dead-letters", summary="Payloads a source could not ingest, newest first")
async def get_dead_letters(
    store: StoreDep,
    source: Annotated[str | None, Query(description="only this source, e.g. `mqtt`")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="most dead letters returned")] = 100,
) -> Response:
    """Messages from a device-side source (MQTT) that were wholly or partly bad: malformed JSON,
    items that failed validation (the valid items of the same payload were stored), a topic that
    names no valid device. Each has `id`, `received_at`, `source`, `topic`, `reason`, `errors`
    (the rejected items, `{"index", "error"}`), `size` and the raw bytes as `payload` (UTF-8 text,
    or null when the bytes are not UTF-8) and `payload_base64`."""
    letters = await store.dead_letters(source, limit)
    body = {"dead_letters": [_as_json(d) for d in letters]}
    return Response(msgspec.json.encode(body), media_type="application/json")


def _as_json(letter: DeadLetter) -> dict[str, Any]:
    try:
        text: str | None = letter.payload.decode()
    except UnicodeDecodeError:
        text = None
    return {
        "id": letter.id,
        "received_at": us_to_iso(letter.received_at),
        "source": letter.source,
        "topic": letter.topic,
        "reason": letter.reason,
        "errors": list(letter.errors),
        "size": len(letter.payload),
        "payload": text,
        "payload_base64": base64.b64encode(letter.payload).decode(),
    }
