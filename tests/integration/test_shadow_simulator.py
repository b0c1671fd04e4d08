"""The in-process simulator follows its devices' desired ``interval_s`` and reports it back."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from ._support import ServerProcess, wait_for

pytestmark = pytest.mark.integration


def _twin(srv: ServerProcess, device: str) -> dict[str, Any]:
    status, body = srv.call("GET", f"/api/v1/devices/{device}")
    assert status == 200, body
    twin: dict[str, Any] = body
    return twin


def _rate(srv: ServerProcess, device: str, seconds: float = 2.0) -> float:
    """Readings per second the device's twin counted over ``seconds``."""
    first = _twin(srv, device)["readings"]
    began = time.monotonic()
    time.sleep(seconds)
    return (_twin(srv, device)["readings"] - first) / (time.monotonic() - began)


def test_a_simulated_device_applies_interval_s_and_reports_it(start: Callable[..., ServerProcess]) -> None:
    srv = start("--simulator", "--devices", "5", "--rate", "2", "--seed", "7")
    status, body = srv.call("GET", "/api/v1/simulator/devices?kind=thermostat")
    assert status == 200, body
    device = body["devices"][0]["id"]
    wait_for(lambda: srv.call("GET", f"/api/v1/devices/{device}")[0] == 200)
    before = _rate(srv, device)
    assert 1.0 <= before <= 3.0  # the fleet's rate: 2 messages of one reading per second

    status, body = srv.call("PATCH", f"/api/v1/devices/{device}/desired", {"interval_s": 0.1})
    assert status == 200, body
    assert body["delta"] == {"interval_s": 0.1}

    shadow = wait_for(lambda: (s := _twin(srv, device)["shadow"])["reported"].get("interval_s") == 0.1 and s)
    assert shadow["delta"] == {}
    assert shadow["reported_version"] == 1
    status, sim = srv.call("GET", "/api/v1/simulator/devices?kind=thermostat")
    assert next(d for d in sim["devices"] if d["id"] == device)["rate"] == pytest.approx(10.0)
    after = _rate(srv, device)
    assert 7.0 <= after <= 13.0

    # a value it cannot use stays in the delta and changes nothing
    status, body = srv.call("PATCH", f"/api/v1/devices/{device}/desired", {"interval_s": -1})
    assert status == 200, body
    time.sleep(0.5)
    shadow = _twin(srv, device)["shadow"]
    assert shadow["delta"] == {"interval_s": -1}
    assert shadow["reported"] == {"interval_s": 0.1}

    # removing the key puts the device back on the fleet's rate (one message each 0.5 s)
    srv.call("PATCH", f"/api/v1/devices/{device}/desired", {"interval_s": None})
    wait_for(lambda: _twin(srv, device)["shadow"]["reported"] == {"interval_s": 0.5})
    assert 1.0 <= _rate(srv, device) <= 3.0


def test_a_restarted_fleet_applies_the_desired_interval_its_twins_hold(
    start: Callable[..., ServerProcess],
) -> None:
    args = ("--simulator", "--devices", "5", "--rate", "2", "--seed", "7")
    srv = start(*args)
    wait_for(lambda: srv.call("GET", "/api/v1/devices/barometer-0001")[0] == 200)
    status, body = srv.call("PATCH", "/api/v1/devices/barometer-0001/desired", {"interval_s": 0.25})
    assert status == 200, body
    wait_for(lambda: _twin(srv, "barometer-0001")["shadow"]["reported"] == {"interval_s": 0.25})
    srv.stop()

    again = start(*args, data=srv.data)
    wait_for(lambda: again.call("GET", "/api/v1/simulator/devices?kind=barometer")[0] == 200)

    def rate() -> float:
        devices = again.call("GET", "/api/v1/simulator/devices?kind=barometer")[1]["devices"]
        found: float = devices[0]["rate"]
        return found

    assert wait_for(lambda: rate() == 4.0, timeout=5)
    shadow = _twin(again, "barometer-0001")["shadow"]
    assert (shadow["delta"], shadow["reported_version"]) == ({}, 1)  # nothing new to report
    assert 3.0 <= _rate(again, "barometer-0001") <= 5.0
