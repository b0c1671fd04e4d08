"""The simulator's control API against a real ``fleetstream up --devices 5``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from fleetstream.simulator.models import KINDS

from ._support import ServerProcess, wait_for

pytestmark = pytest.mark.integration

SIM = "/api/v1/simulator"


@pytest.fixture
def server(start: Callable[..., ServerProcess]) -> ServerProcess:
    # 5 devices deal one thermostat, barometer, hygrometer, heartrate and host; rate 10 makes
    # the host's heartbeat (fan, voltage) come every 1.5 s and its temperature every 0.3 s.
    return start("--simulator", "--devices", "5", "--rate", "10", "--seed", "7")


def _sensors(srv: ServerProcess, device_id: str) -> dict[str, Any]:
    status, body = srv.call("GET", f"/api/v1/devices/{device_id}")
    if status == 404 and body["error"]["code"] == "not_found":
        return {}  # not stored yet: the simulator's first batch may still be on its way
    assert status == 200, body
    sensors: dict[str, Any] = body["sensors"]
    return sensors


def test_forcing_a_host_to_fail_shows_its_precursors_in_the_data(server: ServerProcess) -> None:
    wait_for(
        lambda: "fan_rpm" in _sensors(server, "host-0001") and "temperature" in _sensors(server, "host-0001")
    )
    # Healthy: the fan idles at 1800..2400 rpm and the host's temperature stays in 30..90 around 40..60.
    healthy = _sensors(server, "host-0001")
    assert healthy["fan_rpm"]["value"] >= 1500

    status, body = server.call("PATCH", f"{SIM}/devices/host-0001", {"state": "failing"})
    assert (status, body["state"], body["kind"]) == (200, "failing", "host")

    # Failing starts at severity 0.5: the fan runs at 65 % of its speed (at most 0.65 * ~2500 rpm)
    # and the temperature is 10 °C over its walk, within a heartbeat or two.
    def slowed() -> bool:
        fan = _sensors(server, "host-0001")["fan_rpm"]
        return bool(fan["ts"] > healthy["fan_rpm"]["ts"] and fan["value"] < 1700)

    wait_for(slowed, timeout=10)
    status, body = server.call("GET", f"{SIM}/devices?kind=host")
    assert status == 200
    assert [(d["id"], d["state"]) for d in body["devices"]] == [("host-0001", "failing")]


def test_start_stop_and_status(server: ServerProcess) -> None:
    status, body = server.call("GET", SIM)
    assert status == 200
    assert body["running"] is True
    assert body["devices"] == 5
    assert body["kinds"] == {"thermostat": 1, "barometer": 1, "hygrometer": 1, "heartrate": 1, "host": 1}
    wait_for(lambda: server.call("GET", SIM)[1]["counters"]["acknowledged"] > 0)

    for _ in range(2):  # idempotent
        status, body = server.call("POST", f"{SIM}/stop")
        assert (status, body["running"], body["devices"]) == (200, False, 5)
    stopped = body["counters"]["generated"]
    wait_for(lambda: server.call("GET", SIM)[1]["counters"]["acknowledged"] == stopped)
    status, body = server.call("GET", f"{SIM}/devices")
    assert body["count"] == 5  # still defined, just silent
    assert server.call("GET", SIM)[1]["counters"]["generated"] == stopped

    for _ in range(2):
        status, body = server.call("POST", f"{SIM}/start")
        assert (status, body["running"]) == (200, True)
    wait_for(lambda: server.call("GET", SIM)[1]["counters"]["generated"] > stopped)
    assert server.call("GET", SIM)[1]["counters"]["dropped"] == 0  # the pause is no backlog


def test_add_and_remove_devices(server: ServerProcess) -> None:
    status, body = server.call("POST", f"{SIM}/devices", {"kind": "thermostat", "count": 3})
    assert status == 201, body
    assert body == {"added": ["thermostat-0002", "thermostat-0003", "thermostat-0004"], "devices": 8}
    status, body = server.call("POST", f"{SIM}/devices", {"kind": "tracker", "count": 2})
    assert body["added"] == ["tracker-0001", "tracker-0002"]

    # The new devices send: each shows up as a device of the server.
    wait_for(lambda: server.call("GET", "/api/v1/devices/thermostat-0002")[0] == 200)
    wait_for(lambda: server.call("GET", "/api/v1/devices/thermostat-0004")[0] == 200)
    wait_for(lambda: server.call("GET", "/api/v1/devices/tracker-0002")[0] == 200)
    status, body = server.call("GET", f"{SIM}/devices?kind=thermostat")
    assert [d["id"] for d in body["devices"]] == [f"thermostat-000{i}" for i in range(1, 5)]
    assert {d["rate"] for d in body["devices"]} == {10.0}

    status, body = server.call("DELETE", f"{SIM}/devices/thermostat-0002")
    assert (status, body) == (200, {"removed": ["thermostat-0002"], "devices": 9})
    status, body = server.call("DELETE", f"{SIM}/devices?kind=tracker")
    assert (status, body) == (200, {"removed": ["tracker-0001", "tracker-0002"], "devices": 7})
    status, body = server.call("GET", f"{SIM}/devices")
    ids = [d["id"] for d in body["devices"]]
    assert ids == [
        "thermostat-0001",
        "barometer-0001",
        "hygrometer-0001",
        "heartrate-0001",
        "host-0001",
        "thermostat-0003",
        "thermostat-0004",
    ]
    # A removed device sends no more.
    last = server.call("GET", "/api/v1/devices/thermostat-0002")[1]["messages"]
    assert server.call("GET", SIM)[1]["kinds"]["thermostat"] == 3
    wait_for(lambda: server.call("GET", "/api/v1/devices/thermostat-0003")[1]["messages"] >= 10, timeout=10)
    assert server.call("GET", "/api/v1/devices/thermostat-0002")[1]["messages"] == last


def test_rate_and_tracker_moves(server: ServerProcess) -> None:
    status, body = server.call("PATCH", f"{SIM}/devices/thermostat-0001", {"rate": 2.5})
    assert (status, body["rate"]) == (200, 2.5)
    server.call("POST", f"{SIM}/devices", {"kind": "tracker", "count": 1})
    status, body = server.call(
        "PATCH", f"{SIM}/devices/tracker-0001", {"move_to": {"lat": 52.37, "lon": 4.9}}
    )
    assert status == 200, body
    assert body["location"] == {"lat": 52.37, "lon": 4.9}

    def near() -> bool:
        lat = _sensors(server, "tracker-0001").get("latitude", {}).get("value")
        return lat is not None and abs(lat - 52.37) < 0.01  # a vehicle covers < 300 m in 10 s

    wait_for(lambda: server.call("GET", "/api/v1/devices/tracker-0001")[0] == 200)
    wait_for(near)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "says"),
    [
        ("POST", "/devices", {"kind": "toaster", "count": 1}, 422, ", ".join(KINDS)),
        ("POST", "/devices", {"kind": "host", "count": 0}, 422, "greater than or equal to 1"),
        ("POST", "/devices", {"kind": "host", "count": "many"}, 422, "count"),
        ("DELETE", "/devices?kind=toaster", None, 422, ", ".join(KINDS)),
        ("DELETE", "/devices/nope-1", None, 404, "nope-1"),
        ("PATCH", "/devices/nope-1", {"rate": 1}, 404, "nope-1"),
        ("PATCH", "/devices/host-0001", {"state": "exploded"}, 422, "degraded"),
        ("PATCH", "/devices/host-0001", {"rate": 0}, 422, "rate"),
        ("PATCH", "/devices/host-0001", {}, 422, "at least one of rate, state, move_to"),
        ("PATCH", "/devices/host-0001", {"colour": "red"}, 422, "colour"),
        ("PATCH", "/devices/host-0001", {"move_to": {"lat": 52.37, "lon": 4.9}}, 422, "not a tracker"),
    ],
)
def test_bad_requests_are_4xx_with_the_error_body(
    server: ServerProcess, method: str, path: str, body: Any, status: int, says: str
) -> None:
    got, answer = server.call(method, SIM + path, body)
    assert got == status, answer
    assert set(answer) == {"error"}
    assert says in str(answer["error"])


def test_a_tracker_cannot_leave_the_region(server: ServerProcess) -> None:
    server.call("POST", f"{SIM}/devices", {"kind": "tracker", "count": 1})
    before = server.call("GET", f"{SIM}/devices?kind=tracker")[1]["devices"][0]["location"]
    status, body = server.call(
        "PATCH", f"{SIM}/devices/tracker-0001", {"move_to": {"lat": 48.85, "lon": 2.35}}
    )
    assert status == 422
    assert "outside the region: latitude 52.3..52.42, longitude 4.75..5.0" in body["error"]["message"]
    assert server.call("GET", f"{SIM}/devices?kind=tracker")[1]["devices"][0]["location"] == before


def test_without_the_simulator_the_api_says_how_to_enable_it(start: Callable[..., ServerProcess]) -> None:
    srv = start()  # the fixture's --no-simulator
    for method, path in (("GET", ""), ("POST", "/start"), ("GET", "/devices")):
        status, body = srv.call(method, SIM + path)
        assert status == 404
        assert body["error"]["code"] == "not_found"
        assert "fleetstream up --simulator --devices N" in body["error"]["message"]
