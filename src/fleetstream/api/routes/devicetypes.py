"""Device types and their JSON Schemas (the schema registry): ``GET /api/v1/device-types/...``."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Path, Response

from fleetstream.errors import NotFound
from fleetstream.ingest.devicetypes import BUILT_IN, HOST_KINDS, HOST_MONITOR, DeviceType, by_tag
from fleetstream.ingest.schemas import SCHEMAS, slug

router = APIRouter(tags=["device types"])

SCHEMA_MEDIA_TYPE = "application/schema+json"
_NAME = Path(description="the type's name; case, spaces and underscores do not matter (HeartRateMeter)")
_404: dict[int | str, dict[str, Any]] = {404: {"description": "No such device type."}}


def describe(t: DeviceType, *, with_schema: bool) -> dict[str, Any]:
    """A type as the API shows it: units and valid range per sensor, version, and the schema."""
    out: dict[str, Any] = {
        "name": t.name,
        "slug": slug(t),
        "version": t.version,
        "builtin": True,
        "description": t.description,
        "sensors": {
            sensor: {"unit": unit, "range": list(t.ranges[sensor]) if sensor in t.ranges else None}
            for sensor, unit in t.sensors.items()
        },
        "schema_url": f"/api/v1/device-types/{slug(t)}/schema",
    }
    if t is HOST_MONITOR:
        out["host_sensor_kinds"] = {
            k.name: {"reading": f"{k.key}/<name>", "unit": k.unit, "range": list(k.range)}
            for k in HOST_KINDS.values()
        }
    if with_schema:
        out["schema"] = SCHEMAS[t.name]
    return out


def _find(name: str) -> DeviceType:
    found = by_tag(name)
    if found is None:
        known = ", ".join(BUILT_IN)
        msg = f"no device type {name!r}; known: {known}"
        raise NotFound(msg, details={"name": name, "known": list(BUILT_IN)})
    return found


def _json(content: Any, media_type: str = "application/json") -> Response:
    return Response(msgspec.json.encode(content), media_type=media_type)


@router.get("/api/v1/device-types", summary="Every device type: units and valid ranges per sensor")
async def list_device_types() -> Response:
    """`{"device_types": [...]}`, each as `GET /api/v1/device-types/{name}` shows it, without the schema."""
    return _json({"device_types": [describe(t, with_schema=False) for t in BUILT_IN.values()]})


@router.get(
    "/api/v1/device-types/{name}",
    summary="One device type: units, valid ranges, version and JSON Schema",
    responses=_404,
)
async def get_device_type(name: str = _NAME) -> Response:
    """The type with its JSON Schema under `schema`."""
    return _json(describe(_find(name), with_schema=True))


@router.get(
    "/api/v1/device-types/{name}/schema",
    summary="The JSON Schema (draft 2020-12) of a device type's messages",
    responses={200: {"content": {SCHEMA_MEDIA_TYPE: {}}}, **_404},
)
async def get_device_type_schema(name: str = _NAME) -> Response:
    """The schema alone, as `application/schema+json`."""
    return _json(SCHEMAS[_find(name).name], SCHEMA_MEDIA_TYPE)
