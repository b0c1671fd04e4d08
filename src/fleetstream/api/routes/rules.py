"""Rules and geofence zones: create, list, get, replace, delete; applied to the stream at once."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Path, Request, Response

from fleetstream.api.deps import EngineDep
from fleetstream.engine.rule_control import RULES, ZONES
from fleetstream.errors import MalformedBody

router = APIRouter(tags=["rules"])
_encode = msgspec.json.Encoder().encode

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not JSON."},
    404: {"description": "No such id."},
    409: {"description": "POST of an id that exists."},
    422: {"description": "A definition that cannot work; the message says why."},
}
RULE_HELP = """A rule: `{"id", "name", "kind": "range" (default), "severity", "when": condition |
{"all"|"any": [...]}, "scope": {"device_type" | "devices"}, "escalate_after_us", "escalate_to",
"auto_clear_after_us", "webhook": URL}`; a condition is `{"sensor", "op": ">"|">="|"<"|"<="|
"outside"|"inside", "threshold": x | [min, max], "for_us", "clear_at"}`. See docs/alerts.md for
every kind."""
ZONE_HELP = """A zone: `{"id", "name", "rectangle": {"south", "west", "north", "east"}}` (west > east
spans the antimeridian) or `{"id", "name", "geometry": GeoJSON Polygon | MultiPolygon}`."""


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        msg = f"the body is not JSON: {exc}"
        raise MalformedBody(msg) from None


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _routes(kind: str, help_text: str) -> None:
    one = kind[:-1]
    base = f"/api/v1/{kind}"

    async def create(request: Request, engine: EngineDep) -> Response:
        return _json(await engine.rules.put(kind, await _body(request)), 201)

    async def listing(engine: EngineDep) -> Response:
        return _json({kind: engine.rules.listing(kind)})

    async def get(engine: EngineDep, id: str = Path(description="the id")) -> Response:
        return _json(engine.rules.get(kind, id))

    async def replace(request: Request, engine: EngineDep, id: str = Path(description="the id")) -> Response:
        return _json(await engine.rules.put(kind, await _body(request), id))

    async def delete(engine: EngineDep, id: str = Path(description="the id")) -> Response:
        await engine.rules.delete(kind, id)
        return Response(status_code=204)

    router.add_api_route(
        base,
        create,
        methods=["POST"],
        status_code=201,
        summary=f"Create a {one} (applied to the stream within a second)",
        description=help_text,
        responses=_ERRORS,
    )
    router.add_api_route(base, listing, methods=["GET"], summary=f"Every {one}, by id")
    router.add_api_route(f"{base}/{{id}}", get, methods=["GET"], summary=f"One {one}", responses=_ERRORS)
    router.add_api_route(
        f"{base}/{{id}}",
        replace,
        methods=["PUT"],
        summary=f"Replace a {one} (its open alerts clear when a rule changes)",
        description=help_text,
        responses=_ERRORS,
    )
    router.add_api_route(
        f"{base}/{{id}}",
        delete,
        methods=["DELETE"],
        status_code=204,
        summary=f"Delete a {one}",
        responses=_ERRORS,
        response_class=Response,
    )


_routes(RULES, RULE_HELP)
_routes(ZONES, ZONE_HELP)
