"""The registry of user device types: versions, the compatibility rule, and decoding their messages."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fastjsonschema

from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.errors import InvalidInput
from fleetstream.ingest import fields
from fleetstream.ingest.formats import DecodeContext
from fleetstream.ingest.usertypes import UserType, Validator, compile_schema, key_of, parse_spec

FILE_NAME = "device-types.json"


class IncompatibleType(InvalidInput):
    """A new version that would reject messages the current one accepts (HTTP 409)."""

    code = "incompatible_schema"


def _types(schema: Any) -> set[str] | None:
    if not isinstance(schema, dict) or "type" not in schema:
        return None
    t = schema["type"]
    return {t} if isinstance(t, str) else set(t)


def _narrower_types(old: Any, new: Any) -> bool:
    old_t, new_t = _types(old), _types(new)
    if new_t is None:
        return False
    if old_t is None:
        return True
    return any(t not in new_t and not (t == "integer" and "number" in new_t) for t in old_t)


def _bound(schema: Any, key: str) -> float | None:
    value = schema.get(key) if isinstance(schema, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def breaking_changes(old: UserType, new: UserType) -> list[str]:
    """What in ``new`` would reject a message ``old`` accepts (a conservative structural check).

    Checked on the top-level ``properties``, ``required`` and ``additionalProperties`` of the
    schemas, and on the ranges and units: a removed property, a newly required field, a narrower
    type, minimum, maximum or enum, additional properties newly refused, a narrower or new range,
    a changed unit.
    """
    changes: list[str] = []
    old_props: dict[str, Any] = old.schema.get("properties") or {}
    new_props: dict[str, Any] = new.schema.get("properties") or {}
    for prop in old_props:
        if prop not in new_props:
            changes.append(f"property {prop!r} removed")
    old_required = set(old.schema.get("required") or [])
    changes += [
        f"field {p!r} newly required" for p in new.schema.get("required") or [] if p not in old_required
    ]
    if (
        old.schema.get("additionalProperties") is not False
        and new.schema.get("additionalProperties") is False
    ):
        changes.append("additional properties newly refused")
    for prop, new_p in new_props.items():
        old_p = old_props.get(prop)
        if old_p is None:
            continue
        if _narrower_types(old_p, new_p):
            changes.append(f"property {prop!r}: type narrowed to {new_p['type']!r}")
        low_old, low_new = _bound(old_p, "minimum"), _bound(new_p, "minimum")
        if low_new is not None and (low_old is None or low_new > low_old):
            changes.append(f"property {prop!r}: minimum raised to {low_new:g}")
        high_old, high_new = _bound(old_p, "maximum"), _bound(new_p, "maximum")
        if high_new is not None and (high_old is None or high_new < high_old):
            changes.append(f"property {prop!r}: maximum lowered to {high_new:g}")
        if isinstance(new_p, dict) and "enum" in new_p:
            old_enum = old_p.get("enum") if isinstance(old_p, dict) else None
            if old_enum is None or any(v not in new_p["enum"] for v in old_enum):
                changes.append(f"property {prop!r}: enum narrowed")
    for sensor, (low, high) in new.ranges.items():
        before = old.ranges.get(sensor)
        if before is None:
            changes.append(f"range of {sensor!r} added ({low:g}..{high:g})")
        elif low > before[0] or high < before[1]:
            changes.append(
                f"range of {sensor!r} narrowed from {before[0]:g}..{before[1]:g} to {low:g}..{high:g}"
            )
    for sensor, unit in new.units.items():
        if sensor in old.units and old.units[sensor] != unit:
            changes.append(f"unit of {sensor!r} changed from {old.units[sensor]!r} to {unit!r}")
    return changes


class UserTypes:
    """User-registered device types, every version, kept in ``path`` (none: memory only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._versions: dict[str, list[UserType]] = {}
        self._validators: dict[str, Validator] = {}
        if path is not None and path.exists():
            self.replace(json.loads(path.read_text(encoding="utf-8"))["types"])

    def replace(self, specs: list[dict[str, Any]]) -> None:
        """Hold exactly these stored versions (each ``spec()`` of a type), in place of any held."""
        versions: dict[str, list[UserType]] = {}
        for spec in specs:
            t = parse_spec(spec, spec["version"])
            versions.setdefault(key_of(t.name), []).append(t)
        validators: dict[str, Validator] = {}
        for key, held in versions.items():
            held.sort(key=lambda t: t.version)
            validators[key] = compile_schema(held[-1].schema)
        self._versions, self._validators = versions, validators

    def __len__(self) -> int:
        return len(self._versions)

    def latest(self, name: str) -> UserType | None:
        """The newest version of a type, by any spelling of its name."""
        versions = self._versions.get(key_of(name))
        return versions[-1] if versions else None

    def versions(self, name: str) -> list[UserType]:
        """Every version of a type, oldest first."""
        return list(self._versions.get(key_of(name), []))

    def all(self) -> list[UserType]:
        """The newest version of every type, by name."""
        return sorted((v[-1] for v in self._versions.values()), key=lambda t: t.name)

    def register(self, body: Any, *, force: bool = False) -> tuple[UserType, bool]:
        """Add a version (``(type, True)``), or return the current one unchanged (``(type, False)``).

        Raises:
            InvalidInput: a bad request, naming the field.
            IncompatibleType: the new version would reject messages the current one accepts
                (``details["changes"]``); pass ``force`` to register it anyway.
        """
        new, created = self.prepare(body, force=force)
        if created:
            self.add(new)
        return new, created

    async def submit(self, body: Any, *, force: bool = False) -> tuple[UserType, bool]:
        """:meth:`register`, for the API: a registry shared by processes stores it durably first."""
        return self.register(body, force=force)

    def prepare(self, body: Any, *, force: bool = False) -> tuple[UserType, bool]:
        """The version ``body`` would register (``(type, True)``), or the current one if identical.

        Nothing is added: :meth:`add` does that. Raises as :meth:`register`.
        """
        name = body.get("name") if isinstance(body, dict) else None
        current = self.latest(name) if isinstance(name, str) else None
        new = parse_spec(body, current.version + 1 if current else 1)
        if current is not None:
            if {**current.spec(), "version": 0, "name": ""} == {**new.spec(), "version": 0, "name": ""}:
                return current, False
            changes = breaking_changes(current, new)
            if changes and not force:
                msg = (
                    f"version {new.version} of {current.name} would reject messages version "
                    f"{current.version} accepts: {'; '.join(changes)}. Register it anyway with ?force=true"
                )
                raise IncompatibleType(msg, details={"version": current.version, "changes": changes})
            new = UserType(current.name, new.version, new.schema, new.units, new.ranges, new.description)
        return new, True

    def add(self, new: UserType) -> None:
        """Hold a version :meth:`prepare` made (and save the file, if there is one)."""
        key = key_of(new.name)
        self._validators[key] = compile_schema(new.schema)
        self._versions.setdefault(key, []).append(new)
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        specs = [t.spec() for versions in self._versions.values() for t in versions]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"types": specs}, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

    def match(self, item: dict[str, Any]) -> tuple[UserType, Validator] | None:
        """The user type an item names with ``tag`` or ``device_type`` (canonical readings aside)."""
        if "sensor" in item:
            return None
        name = item.get("tag", item.get("device_type"))
        if not isinstance(name, str):
            return None
        key = key_of(name)
        versions = self._versions.get(key)
        return (versions[-1], self._validators[key]) if versions else None


def decode_user(item: dict[str, Any], ctx: DecodeContext, t: UserType, validate: Validator) -> DeviceMessage:
    """A message of a user type: validated by its schema, a reading per property in ``units``."""
    try:
        validate(item)
    except fastjsonschema.JsonSchemaValueException as exc:
        fields.fail("schema", f"{t.name} v{t.version}: {exc.message}")
    device = fields.device_id(item, ctx.device_id)
    ts = fields.timestamp(item, ctx.received_at, ctx.max_future_us)
    msg_id = fields.msg_id(item)
    readings = [
        Reading(device, ts, sensor, fields.number(sensor, item[sensor]), unit, t.name, msg_id)
        for sensor, unit in t.units.items()
        if item.get(sensor) is not None
    ]
    if not readings:
        fields.fail(" or ".join(t.units), f"required for a {t.name} message")
    return DeviceMessage(device, ts, "telemetry", t.name, readings, msg_id, ctx.received_at)
