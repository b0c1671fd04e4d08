"""The control API of ``fleetstream up``'s built-in simulator: start, stop, add, remove and steer devices.

Handlers run on the event loop that runs the simulator, between two of its
ticks, so a change never races a tick: it takes effect from the fleet's time
generated so far.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleetstream.errors import ConfigError, NotFound
from fleetstream.simulator.lifecycle import STATES
from fleetstream.simulator.models import KINDS, SimDevice
from fleetstream.simulator.simulator import Simulator

router = APIRouter(prefix="/api/v1/simulator", tags=["simulator"])

NO_SIMULATOR = (
    "this server runs no simulator: start it with `fleetstream up --simulator --devices N` "
    "(N >= 1), not --no-simulator"
)
_KINDS = ", ".join(KINDS)


async def get_simulator(request: Request) -> Simulator:
    """The runtime's simulator, or a 404 that says how to enable it."""
    simulator = request.app.state.runtime.info.get("simulator")
    if not isinstance(simulator, Simulator):
        raise NotFound(NO_SIMULATOR)
    return simulator


SimulatorDep = Annotated[Simulator, Depends(get_simulator)]


def _kind(value: str) -> str:
    if value not in KINDS:
        msg = f"unknown device kind {value!r}: expected one of {_KINDS}"
        raise ValueError(msg)
    return value


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 with the project's error body, for a check only the fleet can make."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


class AddDevices(BaseModel):
    """``{"kind": "thermostat", "count": 10}``."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    count: int = Field(1, ge=1, le=100_000)

    _check_kind = field_validator("kind")(_kind)


class Point(BaseModel):
    """A point in degrees (WGS 84)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class DevicePatch(BaseModel):
    """Any of: a rate of its own, a forced lifecycle state, a point to move a tracker to."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    rate: float | None = Field(None, gt=0, le=1000)
    state: Literal["running", "degraded", "failing", "offline", "maintenance"] | None = None
    move_to: Point | None = None

    @model_validator(mode="after")
    def _something(self) -> DevicePatch:
        if self.rate is None and self.state is None and self.move_to is None:
            msg = "give at least one of rate, state, move_to"
            raise ValueError(msg)
        return self


def _device(simulator: Simulator, d: SimDevice) -> dict[str, Any]:
    fleet = simulator.fleet
    view: dict[str, Any] = {
        "id": d.device_id,
        "kind": d.kind.key,
        "state": STATES[fleet.life.state[d.index]],
        "rate": fleet.rate_of(d),
    }
    if d.kind.moves:
        motion = fleet.motions[d.index]
        view["location"] = {"lat": round(motion.lat, 6), "lon": round(motion.lon, 6)}
    return view


def _find(simulator: Simulator, device_id: str) -> SimDevice:
    d = simulator.fleet.active.get(device_id)
    if d is None:
        msg = f"no simulated device {device_id!r}"
        raise NotFound(msg)
    return d


def _status(simulator: Simulator) -> dict[str, Any]:
    fleet = simulator.fleet
    active = fleet.active.values()
    return {
        "running": simulator.running,
        "devices": len(fleet),
        "kinds": dict(Counter(d.kind.key for d in active)),
        "states": dict(Counter(STATES[fleet.life.state[d.index]] for d in active)),
        "rate": fleet.rate,
        "seed": simulator.seed,
        "elapsed_s": round(simulator.elapsed_s, 3),
        "acknowledged_per_s": round(simulator.rate, 1),
        "counters": {
            "generated": simulator.generated,
            "sent": simulator.sent,
            "acknowledged": simulator.acknowledged,
            "errors": simulator.errors,
            "dropped": simulator.dropped,
        },
    }


@router.get("")
async def status(simulator: SimulatorDep) -> dict[str, Any]:
    """Whether it runs, its devices by kind and state, and its message counters."""
    return _status(simulator)


@router.post("/start")
async def start(simulator: SimulatorDep) -> dict[str, Any]:
    """Start sending again after a stop (idempotent)."""
    await simulator.resume()
    return _status(simulator)


@router.post("/stop")
async def stop(simulator: SimulatorDep) -> dict[str, Any]:
    """Stop sending; the devices stay defined (idempotent)."""
    await simulator.pause()
    return _status(simulator)


@router.get("/devices")
async def list_devices(
    simulator: SimulatorDep,
    kind: Annotated[str | None, Query(description=f"only this kind: {_KINDS}")] = None,
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """The devices (id, kind, lifecycle state, rate; trackers' location), oldest first."""
    if kind is not None and kind not in KINDS:
        raise RequestValidationError(
            [{"loc": ("query", "kind"), "msg": f"unknown device kind {kind!r}: expected one of {_KINDS}"}]
        )
    chosen = [d for d in simulator.fleet.active.values() if kind is None or d.kind.key == kind]
    page = chosen[offset : offset + limit]
    return {"count": len(chosen), "devices": [_device(simulator, d) for d in page]}


@router.post("/devices", status_code=201)
async def add_devices(body: AddDevices, simulator: SimulatorDep) -> dict[str, Any]:
    """Add ``count`` devices of ``kind``; they start (off → starting → running) at once."""
    added = simulator.fleet.add(body.kind, body.count, simulator.elapsed_s)
    simulator.resized()
    return {"added": [d.device_id for d in added], "devices": len(simulator.fleet)}


@router.delete("/devices")
async def remove_devices(
    simulator: SimulatorDep,
    kind: Annotated[str, Query(description=f"remove every device of this kind: {_KINDS}")],
) -> dict[str, Any]:
    """Remove every device of a kind."""
    if kind not in KINDS:
        raise RequestValidationError(
            [{"loc": ("query", "kind"), "msg": f"unknown device kind {kind!r}: expected one of {_KINDS}"}]
        )
    fleet = simulator.fleet
    ids = [d.device_id for d in fleet.active.values() if d.kind.key == kind]
    return {"removed": fleet.remove(ids, simulator.elapsed_s), "devices": len(fleet)}


@router.delete("/devices/{device_id}")
async def remove_device(device_id: str, simulator: SimulatorDep) -> dict[str, Any]:
    """Remove one device: it stops sending and leaves the list."""
    _find(simulator, device_id)
    fleet = simulator.fleet
    return {"removed": fleet.remove([device_id], simulator.elapsed_s), "devices": len(fleet)}


@router.patch("/devices/{device_id}")
async def patch_device(device_id: str, body: DevicePatch, simulator: SimulatorDep) -> dict[str, Any]:
    """Change a device's rate, force its lifecycle state, or move a tracker; the device as it is now."""
    d = _find(simulator, device_id)
    fleet, now_s = simulator.fleet, simulator.elapsed_s
    if body.move_to is not None:  # checked first: a refused move changes nothing else
        try:
            fleet.move_to(device_id, body.move_to.lat, body.move_to.lon)
        except ConfigError as exc:
            raise _invalid(field="move_to", message=exc.message) from None
    if body.rate is not None:
        fleet.set_rate(device_id, body.rate, now_s)
    if body.state is not None:
        fleet.force(device_id, body.state, now_s)
    return _device(simulator, d)
