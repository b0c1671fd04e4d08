"""Device types registered through the API: a JSON Schema plus units and ranges, versioned.

Each registration of a name adds a version; a new version that would reject a
message the previous one accepted (see :func:`breaking_changes`) is refused
unless forced. Versions are kept in a JSON file under the data directory
(``device-types.json``), rewritten atomically on each registration.

Messages name their type with ``"tag"`` or ``"device_type"``; they are
validated by a compiled validator (fastjsonschema) of the latest version,
then every property listed in ``units`` that the message carries becomes a
reading. Schemas are trusted like configuration: registering one is an
administrator's action (they are compiled to Python code); the size and
nesting are bounded and only local ``$ref`` is allowed, so compiling never
reaches the network or the disk.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import fastjsonschema

from fleetstream.errors import InvalidInput
from fleetstream.ingest.devicetypes import Range, by_tag

MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 32
NAME_RULE = "1 to 64 characters of A-Z a-z 0-9, space, _ and -, starting with a letter"
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9 _-]{0,63}")
Validator = Callable[[Any], Any]


def key_of(name: str) -> str:
    """A name as lookups compare it: case, spaces, ``_`` and ``-`` ignored."""
    return name.replace(" ", "").replace("_", "").replace("-", "").lower()


@dataclass(frozen=True, slots=True)
class UserType:
    """One version of a registered type."""

    name: str
    version: int
    schema: dict[str, Any]
    units: dict[str, str | None]
    ranges: dict[str, Range]
    description: str = ""

    def bounds_of(self, _device_type: str, sensor: str) -> Range | None:
        """The valid range of one of its sensors (the range check's lookup)."""
        return self.ranges.get(sensor)

    def spec(self) -> dict[str, Any]:
        """The type as stored and shown."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "schema": self.schema,
            "units": self.units,
            "ranges": {s: list(r) for s, r in self.ranges.items()},
        }


def _bad(message: str) -> NoReturn:
    raise InvalidInput(message)


def _check_schema(schema: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        _bad(f"schema: nested deeper than {MAX_DEPTH} levels")
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
            _bad(f"schema: only local $ref (starting with #) is allowed, got {ref!r}")
        for value in schema.values():
            _check_schema(value, depth + 1)
    elif isinstance(schema, list):
        for value in schema:
            _check_schema(value, depth + 1)


def compile_schema(schema: Any) -> Validator:
    """A validator for a user's schema.

    Raises:
        InvalidInput: the schema is not an object, too large or deep, refers outside itself, or
            does not compile.
    """
    if not isinstance(schema, dict):
        _bad("schema: expected a JSON Schema object")
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        _bad(f"schema: larger than {MAX_SCHEMA_BYTES} bytes")
    _check_schema(schema)
    try:
        validator: Validator = fastjsonschema.compile(schema)
    except (fastjsonschema.JsonSchemaDefinitionException, ValueError, TypeError, RecursionError) as exc:
        _bad(f"schema: not a valid JSON Schema: {exc}")
    return validator


def parse_spec(body: Any, version: int) -> UserType:
    """A registration request as a type of the given version.

    Raises:
        InvalidInput: naming the field and the reason.
    """
    if not isinstance(body, dict):
        _bad('expected {"name", "schema", "units", "ranges"?, "description"?}')
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        _bad(f"name: expected {NAME_RULE}, got {name!r}")
    if by_tag(name) is not None:
        _bad(f"name: {name!r} is a built-in device type")
    units = body.get("units")
    if not isinstance(units, dict) or not units:
        _bad('units: expected an object of sensor → unit, e.g. {"moisture": "%"}')
    for sensor, unit in units.items():
        if not 1 <= len(sensor) <= 128 or not (unit is None or (isinstance(unit, str) and len(unit) <= 32)):
            _bad(f"units.{sensor}: expected a unit of at most 32 characters, or null")
    ranges: dict[str, Range] = {}
    raw_ranges = body.get("ranges") or {}
    if not isinstance(raw_ranges, dict):
        _bad("ranges: expected an object of sensor → [low, high]")
    for sensor, bounds in raw_ranges.items():
        if sensor not in units:
            _bad(f"ranges.{sensor}: not a sensor listed in units")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds
            )
            or bounds[0] > bounds[1]
        ):
            _bad(f"ranges.{sensor}: expected [low, high] with finite low <= high, got {bounds!r}")
        ranges[sensor] = (float(bounds[0]), float(bounds[1]))
    description = body.get("description") or ""
    if not isinstance(description, str):
        _bad("description: expected a string")
    schema: dict[str, Any] = body.get("schema")  # type: ignore[assignment]  # compile_schema checks it
    compile_schema(schema)
    return UserType(name, version, schema, dict(units), ranges, description)
