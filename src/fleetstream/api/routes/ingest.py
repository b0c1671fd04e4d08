"""Ingest: ``POST /api/v1/telemetry`` and ``POST /api/v1/devices/{device_id}/telemetry``."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Path, Request, Response

from fleetstream.api.deps import GatewayDep, SettingsDep
from fleetstream.domain.records import DEVICE_ID_RULE, is_valid_device_id
from fleetstream.errors import InvalidReading, PayloadTooLarge
from fleetstream.ingest.formats import FORMATS
from fleetstream.ingest.gateway import IngestResult

router = APIRouter(tags=["ingest"])

_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            'One message, a JSON array of messages, `{"readings": [...]}`, or NDJSON '
            "(`Content-Type: application/x-ndjson`, one message per line). Formats: "
            + "; ".join(f"**{f.name}** `{f.example}`" for f in FORMATS)
        ),
        "content": {
            "application/json": {
                "schema": {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
                "example": [msgspec.json.decode(f.example) for f in FORMATS],
            },
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Every accepted message is durable; `rejected` lists the other items by index.",
        "content": {
            "application/json": {
                "example": {
                    "accepted": 2,
                    "rejected": [{"index": 2, "error": 'value: expected a finite number, got "abc"'}],
                }
            }
        },
    },
    400: {"description": "Malformed JSON (the message says where it broke)."},
    413: {"description": "Body or batch over the limit."},
    415: {"description": "Content type other than JSON or NDJSON."},
    422: {"description": "No item of the request is valid; same body as 202."},
    503: {"description": "Overloaded or shutting down; retry after `Retry-After` seconds."},
}


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        msg = f"body of {length} bytes is over the limit of {limit}"
        raise PayloadTooLarge(msg)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            msg = f"body is over the limit of {limit} bytes"
            raise PayloadTooLarge(msg)
        chunks.append(chunk)
    return b"".join(chunks)


async def _ingest(
    request: Request, gateway: GatewayDep, settings: SettingsDep, device_id: str | None
) -> Response:
    body = await read_body(request, settings.ingest.max_body_bytes)
    result = await gateway.ingest(body, request.headers.get("content-type"), device_id)
    status, content = ingest_answer(result)
    return Response(content, status, media_type="application/json")


def ingest_answer(result: IngestResult) -> tuple[int, bytes]:
    """202 with accepted and rejected, or 422 with the same body when nothing was accepted."""
    content = result.as_dict()
    if result.accepted:
        return 202, msgspec.json.encode(content)
    reason = "the batch is empty" if result.items == 0 else "no valid message in the request"
    content["error"] = {"code": "invalid_reading", "message": reason, "details": None}
    return 422, msgspec.json.encode(content)


@router.post(
    "/api/v1/telemetry",
    status_code=202,
    summary="Send telemetry (one message, a batch, or NDJSON)",
    openapi_extra=_BODY_DOC,
    responses=_RESPONSES,
)
async def post_telemetry(request: Request, gateway: GatewayDep, settings: SettingsDep) -> Response:
    """Validate, normalise and durably store device messages; answers once they are durable."""
    return await _ingest(request, gateway, settings, None)


@router.post(
    "/api/v1/devices/{device_id:path}/telemetry",
    status_code=202,
    summary="Send telemetry of one device",
    openapi_extra=_BODY_DOC,
    responses=_RESPONSES,
)
async def post_device_telemetry(
    request: Request,
    gateway: GatewayDep,
    settings: SettingsDep,
    device_id: str = Path(description=f"the device; {DEVICE_ID_RULE}"),
) -> Response:
    """Like `/api/v1/telemetry`; messages may omit `device_id`, and any they carry must match the URL."""
    if not is_valid_device_id(device_id):
        msg = f'device_id: "{device_id}" is not a valid device id ({DEVICE_ID_RULE})'
        raise InvalidReading(msg)
    return await _ingest(request, gateway, settings, device_id)
