"""The failure predictor in a real `fleetstream up`: risk in the twin, its alerts, training by API."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetstream.domain.timeutil import us_to_iso

from ._support import ServerProcess, wait_for

pytestmark = pytest.mark.integration

MIN = 60_000_000
T0 = 1_680_033_600_000_000  # 2023-03-28T20:00:00Z, on the minute
MINUTES = 40
FAIL_AT, DEGRADE_AT = 30, 20  # minutes: the failing hosts degrade, then fall silent
HEALTHY = {"temperature": 50.0, "cpu_usage": 30.0, "fan_rpm": 3000.0, "voltage": 12.0}
SHIFT = {"temperature": 25.0, "cpu_usage": 35.0, "fan_rpm": -2000.0, "voltage": -1.0}


def risk(srv: ServerProcess, device: str) -> dict[str, Any] | None:
    status, body = srv.call("GET", f"/api/v1/devices/{device}")
    return body.get("failure_risk") if status == 200 else None


def test_a_failing_host_raises_its_risk_and_opens_a_failure_predicted_alert(
    start: Callable[..., ServerProcess],
) -> None:
    """docs/prediction.md, "In the running server": the shipped model scores the simulator's host;
    forced to `failing`, its risk passes the threshold and the alert opens (2 s windows keep it short)."""
    srv = start(
        "--simulator",
        "--devices",
        "5",
        "--rate",
        "10",
        "--seed",
        "7",
        "--window",
        "2s,10s",
        "--out-of-orderness",
        "0.5",
        env={"FLEETSTREAM_PREDICTOR__WINDOW_S": "2"},
    )
    status, predictor = srv.call("GET", "/api/v1/models/train")
    assert status == 200
    assert predictor["enabled"] is True
    assert predictor["model"]["round"] is None  # the registry is empty: the model shipped in the package
    threshold = predictor["threshold"]
    assert 0 < threshold < 1
    # A running host, scored once a few of its windows have closed (the baseline is its own past).
    first_at = wait_for(lambda: (r := risk(srv, "host-0001")) and r["at"], timeout=20)
    calm = wait_for(lambda: (r := risk(srv, "host-0001")) and r["at"] > first_at and r, timeout=20)
    assert calm["score"] < threshold
    assert calm["model_round"] is None
    assert srv.call("GET", "/api/v1/alerts?rule_id=failure_predicted&device_id=host-0001")[1]["alerts"] == []
    patched = srv.call("PATCH", "/api/v1/simulator/devices/host-0001", {"state": "failing"})
    assert patched[0] == 200, patched
    hot = wait_for(lambda: (r := risk(srv, "host-0001")) and r["score"] >= threshold and r, timeout=15)
    assert hot["score"] > calm["score"]
    found = wait_for(
        lambda: srv.call("GET", "/api/v1/alerts?rule_id=failure_predicted&device_id=host-0001")[1]["alerts"],
        timeout=5,
    )
    assert [(a["state"], a["severity"]) for a in found] == [("active", "warning")]
    events = wait_for(  # device events are stored every second
        lambda: srv.call("GET", "/api/v1/devices/host-0001/events?type=alert_opened")[1]["events"], timeout=5
    )
    assert [e["payload"]["rule_id"] for e in events] == ["failure_predicted"]
    assert events[0]["payload"]["alert_id"] == found[0]["id"]
    scores = srv.call("GET", "/api/v1/models/scores")[1]
    assert scores["devices"][0]["device_id"] == "host-0001"
    assert scores["devices"][0]["alert"] is True


def _value(sensor: str, minute: int, host: int, failing: bool) -> float:
    base = HEALTHY[sensor] * (1 + 0.02 * (host % 5)) + 0.3 * ((minute * 7 + host) % 5)
    if not failing or minute < DEGRADE_AT:
        return base
    return base + SHIFT[sensor] * (minute - DEGRADE_AT) / (FAIL_AT - DEGRADE_AT)


def test_training_by_api_stores_rounds_and_the_running_predictor_switches_to_the_newest(
    start: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    srv = start()
    # No simulator and no failures file: nothing to label the windows with.
    status, body = srv.call("POST", "/api/v1/models/train", {"rounds": 2})
    assert status == 422
    assert "ground truth" in body["error"]["message"]
    assert srv.call("POST", "/api/v1/models/train", {"rounds": 0})[0] == 422
    assert srv.call("POST", "/api/v1/models/train", {"failures": str(tmp_path / "none.jsonl")})[0] == 422
    # 12 hosts, the even ones degrade and fail; two readings per sensor per minute.
    readings, records = [], []
    for h in range(12):
        device, failing = f"host-{h:04d}", h % 2 == 0
        for m in range(FAIL_AT if failing else MINUTES):
            for k in range(2):
                for sensor in HEALTHY:
                    value = _value(sensor, m, h, failing) + k * 0.1
                    ts = us_to_iso(T0 + m * MIN + k * 20_000_000)
                    readings.append({"device_id": device, "ts": ts, "sensor": sensor, "value": value})
        if failing:
            records.append(
                {
                    "device_id": device,
                    "degraded_at": us_to_iso(T0 + DEGRADE_AT * MIN + 1000),
                    "failing_at": us_to_iso(T0 + (DEGRADE_AT + 6) * MIN),
                    "failed_at": us_to_iso(T0 + FAIL_AT * MIN),
                    "recovered_at": None,
                }
            )
    readings.sort(key=lambda r: r["ts"])
    for i in range(0, len(readings), 5000):
        status, body = srv.call("POST", "/api/v1/telemetry", readings[i : i + 5000])
        assert status in (200, 202), body
    failures = tmp_path / "failures.jsonl"
    failures.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    status, body = srv.call(
        "POST", "/api/v1/models/train", {"rounds": 3, "sites": 2, "failures": str(failures)}
    )
    assert status == 202, body
    assert body["training"]["state"] == "running"
    done = wait_for(
        lambda: (s := srv.call("GET", "/api/v1/models/train")[1])["training"]["state"] != "running" and s,
        timeout=20,
    )
    assert done["training"]["state"] == "done", done
    assert done["training"]["rounds"] == [1, 2, 3]
    assert done["model"]["round"] == 3  # switched without a restart
    listed = srv.call("GET", "/api/v1/models")[1]
    assert listed["latest"] == 3
    assert [m["round"] for m in listed["models"]] == [1, 2, 3]
