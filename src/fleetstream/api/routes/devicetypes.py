"""Device types and their JSON Schemas (the schema registry): ``/api/v1/device-types``."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Path, Query, Request, Response

from fleetstream.api.deps import RuntimeDep
from fleetstream.api.errors import error_body
from fleetstream.api.routes.ingest import read_body
from fleetstream.errors import MalformedBody, NotFound
from fleetstream.ingest.devicetypes import BUILT_IN, HOST_KINDS, HOST_MONITOR, DeviceType, by_tag
from fleetstream.ingest.schemas import SCHEMAS, slug
from fleetstream.ingest.typeregistry import IncompatibleType, UserTypes
from fleetstream.ingest.usertypes import UserType

router = APIRouter(tags=["device types"])

SCHEMA_MEDIA_TYPE = "application/schema+json"
_NAME = Path(description="the type's name; case, spaces and underscores do not matter (HeartRateMeter)")
_MAX_REGISTER_BYTES = 1024 * 1024
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


def describe_user(t: UserType, versions: list[int], *, with_schema: bool) -> dict[str, Any]:
    """A registered type as the API shows it (the newest version)."""
    out: dict[str, Any] = {
        "name": t.name,
        "slug": t.name.replace(" ", ""),
        "version": t.version,
        "versions": versions,
        "builtin": False,
        "description": t.description,
        "sensors": {
            sensor: {"unit": unit, "range": list(t.ranges[sensor]) if sensor in t.ranges else None}
            for sensor, unit in t.units.items()
        },
        "schema_url": f"/api/v1/device-types/{t.name.replace(' ', '')}/schema",
    }
    if with_schema:
        out["schema"] = t.schema
    return out


def _find(name: str, user_types: UserTypes) -> DeviceType | UserType:
    found = by_tag(name) or user_types.latest(name)
    if found is None:
        known = [*BUILT_IN, *(t.name for t in user_types.all())]
        msg = f"no device type {name!r}; known: {', '.join(known)}"
        raise NotFound(msg, details={"name": name, "known": known})
    return found


def _describe(t: DeviceType | UserType, user_types: UserTypes, *, with_schema: bool) -> dict[str, Any]:
    if isinstance(t, DeviceType):
        return describe(t, with_schema=with_schema)
    versions = [v.version for v in user_types.versions(t.name)]
    return describe_user(t, versions, with_schema=with_schema)


def _json(content: Any, media_type: str = "application/json") -> Response:
    return Response(msgspec.json.encode(content), media_type=media_type)


@router.get("/api/v1/device-types", summary="Every device type: units and valid ranges per sensor")
async def list_device_types(runtime: RuntimeDep) -> Response:
    """`{"device_types": [...]}`, each as `GET /api/v1/device-types/{name}` shows it, without the schema:
    the built-in types, then registered ones by name."""
    user_types = runtime.device_types
    types: list[DeviceType | UserType] = [*BUILT_IN.values(), *user_types.all()]
    return _json({"device_types": [_describe(t, user_types, with_schema=False) for t in types]})


@router.get(
    "/api/v1/device-types/{name}",
    summary="One device type: units, valid ranges, version and JSON Schema",
    responses=_404,
)
async def get_device_type(runtime: RuntimeDep, name: str = _NAME) -> Response:
    """The type with its JSON Schema under `schema` (a registered type: its newest version)."""
    user_types = runtime.device_types
    return _json(_describe(_find(name, user_types), user_types, with_schema=True))


@router.get(
    "/api/v1/device-types/{name}/schema",
    summary="The JSON Schema (draft 2020-12) of a device type's messages",
    responses={200: {"content": {SCHEMA_MEDIA_TYPE: {}}}, **_404},
)
async def get_device_type_schema(runtime: RuntimeDep, name: str = _NAME) -> Response:
    """The schema alone, as `application/schema+json`."""
    found = _find(name, runtime.device_types)
    schema = SCHEMAS[found.name] if isinstance(found, DeviceType) else found.schema
    return _json(schema, SCHEMA_MEDIA_TYPE)


_REGISTER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "example": {
                    "name": "Soil Probe",
                    "description": "moisture and acidity of a field",
                    "schema": {
                        "type": "object",
                        "properties": {
                            "moisture": {"type": "number", "minimum": 0, "maximum": 100},
                            "ph": {"type": "number"},
                        },
                        "required": ["device_id", "moisture"],
                    },
                    "units": {"moisture": "%", "ph": "pH"},
                    "ranges": {"moisture": [0, 100], "ph": [0, 14]},
                }
            }
        },
    }
}


@router.post(
    "/api/v1/device-types",
    summary="Register a device type (or a new version of one) from a JSON Schema, units and ranges",
    status_code=201,
    openapi_extra=_REGISTER_DOC,
    responses={
        200: {"description": "Identical to the current version: nothing registered."},
        201: {"description": "Registered: the type as `GET /api/v1/device-types/{name}` shows it."},
        409: {"description": "The new version would reject messages the current one accepts."},
        400: {"description": "A bad request, naming the field."},
    },
)
async def register_device_type(
    request: Request,
    runtime: RuntimeDep,
    force: bool = Query(False, description="register a version even if it rejects what the last accepted"),
) -> Response:
    """Messages that name the type (`"tag"` or `"device_type"`) are then validated against its schema;
    every property listed in `units` becomes a reading, checked against `ranges`."""
    try:
        body = msgspec.json.decode(await read_body(request, _MAX_REGISTER_BYTES))
    except msgspec.DecodeError as exc:
        msg = f"malformed JSON: {exc}"
        raise MalformedBody(msg) from None
    user_types = runtime.device_types
    try:
        registered, created = await user_types.submit(body, force=force)
    except IncompatibleType as exc:
        return _json_status(error_body(exc.code, exc.message, exc.details), 409)
    versions = [v.version for v in user_types.versions(registered.name)]
    return _json_status(describe_user(registered, versions, with_schema=True), 201 if created else 200)


def _json_status(content: Any, status: int) -> Response:
    return Response(msgspec.json.encode(content), status, media_type="application/json")
