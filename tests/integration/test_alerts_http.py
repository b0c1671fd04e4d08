"""Rules, zones and alerts over HTTP against a real `fleetstream up`: every rule kind, the alert
lifecycle on the SSE stream and a local webhook (one that fails twice first), acknowledgement,
bad definitions, and a restart that finds the same alerts and device events."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ._support import (
    T0,
    ServerProcess,
    at,
    iso,
    prometheus,
    query,
    reading,
    sse_frames,
    stop_cleanly,
    wait_for,
)

pytestmark = pytest.mark.integration

S = 1_000_000
T0_US = int(T0.timestamp()) * S


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST; ``/flaky`` answers 500 twice first."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.attempts: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.attempts[self.path] = outer.attempts.get(self.path, 0) + 1
                if self.path.startswith("/flaky") and outer.attempts[self.path] <= 2:
                    self.send_response(500)
                else:
                    outer.received.append((self.path, body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["duckdb", "postgresql"])
def store_args(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """``up``'s store: the DuckDB file under ``--data``, or a fresh database of the session's PostgreSQL."""
    if request.param == "duckdb":
        return ()
    return ("--store", request.getfixturevalue("postgres_url"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@contextlib.contextmanager
def alert_stream(srv: ServerProcess) -> Iterator[list[dict[str, Any]]]:
    """The ``alert`` frames of ``/api/v1/stream/alerts``, gathered by a thread into a list."""
    frames: list[dict[str, Any]] = []
    connected = threading.Event()
    client = httpx.Client(timeout=60)

    def follow() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            client.stream("GET", srv.url + "/api/v1/stream/alerts") as r,
        ):
            for frame in sse_frames(r.iter_raw()):
                if frame["comments"] == ["connected"]:
                    connected.set()
                elif frame["event"] == "alert":
                    frames.append(frame["data"])

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert connected.wait(10)
    try:
        yield frames
    finally:
        client.close()
        thread.join(5)


def post(srv: ServerProcess, body: Any) -> None:
    status, answer = srv.call("POST", "/api/v1/telemetry", body)
    assert status in (200, 202), answer


def fix(device: str, seconds: float, lat: float, lon: float) -> dict[str, Any]:
    return {"device_id": device, "ts": at(seconds), "latitude": lat, "longitude": lon}


def us(seconds: float) -> int:
    return T0_US + round(seconds * S)


def alerts(srv: ServerProcess, **params: Any) -> list[dict[str, Any]]:
    status, body = srv.call("GET", query("/api/v1/alerts", **params))
    assert status == 200, body
    found: list[dict[str, Any]] = body["alerts"]
    return found


def rule_events(srv: ServerProcess, device: str) -> list[tuple[str, str]]:
    status, body = srv.call("GET", f"/api/v1/devices/{device}/events?limit=1000")
    assert status == 200, body
    return [(e["type"], e["ts"]) for e in body["events"] if e["type"].startswith(("alert_", "zone_"))]


YARD = {"id": "yard", "name": "Yard", "rectangle": {"south": 52.0, "west": 4.0, "north": 53.0, "east": 5.0}}


def rules(receiver: Receiver) -> list[dict[str, Any]]:
    return [
        {
            "id": "hot",
            "name": "Oven too hot",
            "severity": "warning",
            "when": {"sensor": "temperature", "op": ">", "threshold": 80, "clear_at": 78},
            "scope": {"devices": ["oven"]},
            "webhook": receiver.url("/flaky"),
        },
        {
            "kind": "zone",
            "id": "stay",
            "zone_id": "yard",
            "must": "stay_inside",
            "scope": {"devices": ["t1"]},
        },
        {"kind": "offline", "id": "quiet", "after_s": 2, "scope": {"devices": ["quiet"]}},
        {"kind": "rate", "id": "jump", "sensor": "pressure", "max_per_s": 10, "scope": {"devices": ["baro"]}},
        {
            "kind": "anomaly",
            "id": "odd",
            "sensor": "humidity",
            "k": 4,
            "warmup": 5,
            "scope": {"devices": ["hygro"]},
            "webhook": receiver.url("/hooks"),
        },
    ]


def test_every_rule_kind_alerts_on_sse_and_webhooks_then_survives_a_restart(
    start: Callable[..., ServerProcess], receiver: Receiver
) -> None:
    env = {"FLEETSTREAM_ENGINE__WEBHOOK_BACKOFF_S": "0.1", "FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.2"}
    srv = start(env=env)
    assert srv.call("POST", "/api/v1/zones", YARD) == (201, YARD)
    for rule in rules(receiver):
        status, body = srv.call("POST", "/api/v1/rules", rule)
        assert status == 201, body
    status, listed = srv.call("GET", "/api/v1/rules")
    assert (status, [r["id"] for r in listed["rules"]]) == (200, ["hot", "jump", "odd", "quiet", "stay"])

    with alert_stream(srv) as stream:
        post(srv, [reading("quiet", 0, 20.0), reading("oven", 0, 70.0), fix("t1", 0, 52.5, 4.5)])
        post(srv, [{"device_id": "baro", "timestamp": at(0), "sensor": "pressure", "value": 1000.0}])
        for i in range(6):  # the warm-up: humidity 40 +- 0.5
            post(srv, reading("hygro", i * 0.1, 40.0 + (0.5 if i % 2 else -0.5), "humidity"))
        post(srv, [reading("oven", 1, 85.0), fix("t1", 1, 54.0, 4.5)])  # too hot; the tracker leaves
        post(srv, [{"device_id": "baro", "timestamp": at(1), "sensor": "pressure", "value": 1100.0}])
        post(srv, reading("hygro", 1, 90.0, "humidity"))  # far beyond 4 deviations
        post(srv, [reading("oven", 2, 79.0), fix("t1", 2, 52.2, 4.2)])  # within the hysteresis; back in
        post(srv, [reading("oven", 3, 77.0)])  # below clear_at: clears
        post(srv, [reading("oven", 10, 70.0)])  # the partition time passes quiet's deadline (0 + 2 s)
        wait_for(lambda: len(stream) >= 7, timeout=10)
    seen = {(f["alert"]["rule_id"], f["event"]): f["alert"] for f in stream}
    assert len(stream) == 7
    assert set(seen) == {
        ("hot", "opened"),
        ("hot", "cleared"),
        ("stay", "opened"),
        ("stay", "cleared"),
        ("quiet", "opened"),
        ("jump", "opened"),
        ("odd", "opened"),
    }
    hot = seen[("hot", "cleared")]
    assert hot["id"] == f"hot:oven:{us(1)}"
    assert (hot["opened_at"], hot["cleared_at"], hot["first_value"], hot["last_value"]) == (
        at(1),
        at(3),
        85.0,
        77.0,
    )
    assert hot["message"].startswith("Oven too hot: ")
    # Offline: stamped at last reading + T exactly (event time), not when a sweep came round.
    assert seen[("quiet", "opened")]["opened_at"] == at(2)
    assert seen[("stay", "opened")]["device_id"] == "t1"

    # The webhook that failed twice got the open and the clear in the end; the other one its open.
    wait_for(lambda: len([p for p, _ in receiver.received if p == "/flaky"]) == 2)
    flaky = sorted((b["event"], b["alert"]["id"]) for p, b in receiver.received if p == "/flaky")
    assert flaky == [("cleared", f"hot:oven:{us(1)}"), ("opened", f"hot:oven:{us(1)}")]
    assert receiver.attempts["/flaky"] >= 4
    wait_for(lambda: any(p == "/hooks" for p, _ in receiver.received))
    assert [b["alert"]["rule_id"] for p, b in receiver.received if p == "/hooks"] == ["odd"]

    # Acknowledge an open alert; a cleared one cannot be.
    jump = seen[("jump", "opened")]["id"]
    status, acked = srv.call("POST", f"/api/v1/alerts/{jump}/ack", {"by": "ana", "note": "checking the seal"})
    assert status == 200, acked
    assert (acked["state"], acked["acknowledged_by"], acked["ack_note"]) == (
        "acknowledged",
        "ana",
        "checking the seal",
    )
    status, body = srv.call("POST", f"/api/v1/alerts/{hot['id']}/ack", {"by": "ana"})
    assert status == 409, body
    assert "cleared" in body["error"]["message"]
    assert srv.call("POST", "/api/v1/alerts/nope/ack", {"by": "ana"})[0] == 404
    assert srv.call("POST", f"/api/v1/alerts/{jump}/ack", {"note": "who?"})[0] == 400

    samples = prometheus(srv)
    assert (samples["fleetstream_rules"], samples["fleetstream_zones"]) == (5, 1)
    assert samples["fleetstream_alerts_open"] == 3  # quiet, jump (acknowledged), odd
    assert (samples["fleetstream_webhooks_sent_total"], samples["fleetstream_webhooks_retries_total"]) == (
        3,
        2,
    )
    assert samples["fleetstream_webhooks_failed_total"] == samples["fleetstream_webhooks_dropped_total"] == 0

    # Listing and filters.
    assert [a["id"] for a in alerts(srv, rule_id="hot")] == [f"hot:oven:{us(1)}"]
    assert {a["rule_id"] for a in alerts(srv, state="cleared")} == {"hot", "stay"}
    assert [a["rule_id"] for a in alerts(srv, state="acknowledged")] == ["jump"]
    assert [a["rule_id"] for a in alerts(srv, device_id="t1")] == ["stay"]
    assert {a["rule_id"] for a in alerts(srv, from_=at(1.5), to=at(5))} == {"quiet"}  # opened at T0+2
    assert srv.call("GET", "/api/v1/alerts?state=open")[0] == 400
    assert srv.call("GET", "/api/v1/alerts?from=yesterday")[0] == 400
    status, one = srv.call("GET", f"/api/v1/alerts/{hot['id']}")
    assert (status, one["state"]) == (200, "cleared")
    assert srv.call("GET", "/api/v1/alerts/nope")[0] == 404

    # Alerts and zone crossings are device events, in the twin's history.
    assert rule_events(srv, "oven") == [("alert_opened", at(1)), ("alert_cleared", at(3))]
    assert rule_events(srv, "t1") == [
        ("zone_entered", at(0)),
        ("zone_left", at(1)),
        ("alert_opened", at(1)),
        ("zone_entered", at(2)),
        ("alert_cleared", at(2)),
    ]
    before = {a["id"]: a for a in alerts(srv)}
    events_before = {d: rule_events(srv, d) for d in ("oven", "t1", "quiet", "baro", "hygro")}

    # A restart on the same data: the same rules, alerts (the acknowledgement kept) and events.
    stop_cleanly(srv)
    again = start(data=srv.data, env=env)
    assert {a["id"]: a for a in alerts(again)} == before
    assert {d: rule_events(again, d) for d in events_before} == events_before
    assert [r["id"] for r in again.call("GET", "/api/v1/rules")[1]["rules"]] == [
        "hot",
        "jump",
        "odd",
        "quiet",
        "stay",
    ]
    # Still evaluating after the restart: the acknowledged rate alert clears on a calm reading.
    post(again, [{"device_id": "baro", "timestamp": at(20), "sensor": "pressure", "value": 1100.5}])
    wait_for(lambda: alerts(again, rule_id="jump")[0]["state"] == "cleared")
    cleared = alerts(again, rule_id="jump")[0]
    assert (cleared["acknowledged_by"], cleared["cleared_at"]) == ("ana", at(20))


def test_rule_and_zone_crud_and_bad_definitions(
    start: Callable[..., ServerProcess], store_args: tuple[str, ...]
) -> None:
    srv = start(*store_args)
    hot = {"id": "hot", "when": {"sensor": "temperature", "op": ">", "threshold": 80}}
    assert srv.call("POST", "/api/v1/rules", hot)[0] == 201
    status, body = srv.call("POST", "/api/v1/rules", hot)
    assert status == 409
    assert "exists" in body["error"]["message"]
    status, body = srv.call(
        "POST", "/api/v1/rules", {"id": "x", "when": {"sensor": "t", "op": "=~", "threshold": 1}}
    )
    assert status == 422
    assert (
        body["error"]["message"]
        == "condition on 't': unknown operator '=~' (use >, >=, <, <=, outside, inside)"
    )
    status, body = srv.call("POST", "/api/v1/rules", {"kind": "offline", "id": "q", "after_s": -1})
    assert (status, body["error"]["message"]) == (422, "rule 'q': after_s must be a positive number, got -1")
    status, body = srv.call("POST", "/api/v1/rules", {"kind": "teleport", "id": "z"})
    assert status == 422
    assert "unknown kind 'teleport'" in body["error"]["message"]
    status, body = srv.call(
        "POST", "/api/v1/zones", {"id": "z", "rectangle": {"south": 95, "west": 0, "north": 96, "east": 1}}
    )
    assert status == 422
    assert "latitude 95 is outside [-90, 90]" in body["error"]["message"]
    assert srv.call("POST", "/api/v1/rules", raw=b"{not json")[0] == 400
    assert srv.call("POST", "/api/v1/rules", [1, 2])[0] == 422
    # NUL characters: PostgreSQL text cannot hold them, so every store refuses them alike (never a 5xx).
    status, body = srv.call("POST", "/api/v1/rules", {**hot, "id": "nul", "name": "Hot\u0000"})
    assert (status, body["error"]["message"]) == (
        422,
        "name: NUL characters (\\u0000) are not allowed in a rule",
    )
    status, body = srv.call(
        "POST", "/api/v1/zones", {**YARD, "rectangle": {**YARD["rectangle"], "no\u0000rth": 53.0}}
    )
    assert (status, body["error"]["message"]) == (
        422,
        "rectangle.no\u0000rth: NUL characters (\\u0000) are not allowed in a zone",
    )
    assert srv.call("PUT", "/api/v1/rules/h%00t", hot)[0] == 422  # the body's id is not the path's
    assert srv.call("POST", "/api/v1/alerts/nope/ack", {"by": "a\u0000na"})[0] == 400
    assert srv.call("GET", "/api/v1/alerts/nope%00")[0] == 404
    assert srv.call("GET", "/api/v1/alerts?device_id=%00")[1]["alerts"] == []
    assert srv.call("DELETE", "/api/v1/rules/h%00t")[0] == 404

    # Update, read back, delete.
    cooler = {**hot, "name": "Hot oven", "when": {"sensor": "temperature", "op": ">", "threshold": 70}}
    status, body = srv.call("PUT", "/api/v1/rules/hot", cooler)
    assert (status, body["when"]["threshold"]) == (200, 70)
    assert srv.call("GET", "/api/v1/rules/hot")[1]["name"] == "Hot oven"
    assert srv.call("PUT", "/api/v1/rules/ghost", {**hot, "id": "ghost"})[0] == 404
    assert srv.call("PUT", "/api/v1/rules/hot", {**hot, "id": "other"})[0] == 422
    assert srv.call("GET", "/api/v1/rules/ghost")[0] == 404
    assert srv.call("DELETE", "/api/v1/rules/hot")[0] == 204
    assert srv.call("DELETE", "/api/v1/rules/hot")[0] == 404
    assert srv.call("GET", "/api/v1/rules") == (200, {"rules": []})

    polygon = {
        "id": "square",
        "name": "Square",
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]},
    }
    assert srv.call("POST", "/api/v1/zones", polygon) == (201, polygon)
    assert srv.call("GET", "/api/v1/zones/square") == (200, polygon)
    assert srv.call("DELETE", "/api/v1/zones/square")[0] == 204


def test_a_new_rule_applies_within_a_second_and_does_not_flap(start: Callable[..., ServerProcess]) -> None:
    srv = start()
    post(srv, reading("stove", 0, 70.0))
    rule = {
        "id": "stove-hot",
        "when": {"sensor": "temperature", "op": ">", "threshold": 80, "clear_at": 75},
        "scope": {"devices": ["stove"]},
    }
    assert srv.call("POST", "/api/v1/rules", rule)[0] == 201
    # Hovering at the edge: above 80, just under, above again, under 80 but above 75: one alert.
    for i, value in enumerate([81.0, 79.5, 80.5, 79.9, 80.2, 76.0], start=1):
        post(srv, reading("stove", i, value))
    found = wait_for(lambda: alerts(srv, rule_id="stove-hot"), timeout=1.5)
    assert [(a["state"], a["opened_at"]) for a in found] == [("active", at(1))]
    post(srv, reading("stove", 7, 74.0))
    wait_for(lambda: alerts(srv, rule_id="stove-hot")[0]["state"] == "cleared", timeout=1.5)
    assert len(alerts(srv, rule_id="stove-hot")) == 1
    assert iso(T0 + timedelta(seconds=7)) == alerts(srv, rule_id="stove-hot")[0]["cleared_at"]


def test_the_walkthrough_with_the_simulator(start: Callable[..., ServerProcess], receiver: Receiver) -> None:
    """docs/alerts.md: a zone and a temperature rule by API, a tracker leaves the zone and a host
    overheats (both forced through the simulator's control API), alerts on SSE and a webhook, ack, clear."""
    srv = start("--simulator", "--devices", "5", "--rate", "10", "--seed", "7")
    status, body = srv.call("POST", "/api/v1/simulator/devices", {"kind": "tracker", "count": 1})
    assert status == 201, body
    [tracker] = body["added"]
    assert (
        srv.call("PATCH", f"/api/v1/simulator/devices/{tracker}", {"move_to": {"lat": 52.40, "lon": 4.80}})[0]
        == 200
    )

    def sensors(device: str) -> dict[str, Any]:
        status, twin = srv.call("GET", f"/api/v1/devices/{device}")
        return twin["sensors"] if status == 200 else {}

    wait_for(lambda: {"temperature", "fan_rpm"} <= sensors("host-0001").keys())
    base = sensors("host-0001")["temperature"]["value"]
    depot = {
        "id": "depot",
        "name": "Depot",
        "rectangle": {"south": 52.38, "west": 4.76, "north": 52.42, "east": 4.84},
    }
    assert srv.call("POST", "/api/v1/zones", depot)[0] == 201
    assert (
        srv.call("POST", "/api/v1/rules", {"kind": "zone", "id": "stay-in-depot", "zone_id": "depot"})[0]
        == 201
    )
    overheat = {
        "id": "host-overheat",
        "name": "Host overheating",
        "severity": "critical",
        "scope": {"devices": ["host-0001"]},
        # Hot and a slow fan together: a failing host's fan drops to 65 % of its speed at once.
        "when": {
            "all": [
                {"sensor": "temperature", "op": ">", "threshold": base + 3},
                {"sensor": "fan_rpm", "op": "<", "threshold": 1700},
            ]
        },
        "webhook": receiver.url("/overheat"),
    }
    assert srv.call("POST", "/api/v1/rules", overheat)[0] == 201
    wait_for(lambda: any(e[0] == "zone_entered" for e in rule_events(srv, tracker)))

    with alert_stream(srv) as stream:
        assert (
            srv.call(
                "PATCH", f"/api/v1/simulator/devices/{tracker}", {"move_to": {"lat": 52.32, "lon": 4.98}}
            )[0]
            == 200
        )
        assert srv.call("PATCH", "/api/v1/simulator/devices/host-0001", {"state": "failing"})[0] == 200

        def opened(rule: str) -> dict[str, Any] | None:
            return next(
                (f["alert"] for f in stream if f["event"] == "opened" and f["alert"]["rule_id"] == rule), None
            )

        left = wait_for(lambda: opened("stay-in-depot"), timeout=15)
        hot = wait_for(lambda: opened("host-overheat"), timeout=15)
    assert left["device_id"] == tracker
    assert ("zone_left", left["opened_at"]) in rule_events(srv, tracker)
    assert (hot["device_id"], hot["severity"], hot["state"]) == ("host-0001", "critical", "active")
    wait_for(lambda: [b["event"] for p, b in receiver.received if p == "/overheat"] == ["opened"])

    status, acked = srv.call(
        "POST", f"/api/v1/alerts/{hot['id']}/ack", {"by": "ops", "note": "replacing the fan"}
    )
    assert (status, acked["state"]) == (200, "acknowledged")
    assert srv.call("PATCH", "/api/v1/simulator/devices/host-0001", {"state": "running"})[0] == 200
    wait_for(lambda: srv.call("GET", f"/api/v1/alerts/{hot['id']}")[1]["state"] == "cleared", timeout=15)
    wait_for(lambda: [b["event"] for p, b in receiver.received if p == "/overheat"] == ["opened", "cleared"])
    cleared = srv.call("GET", f"/api/v1/alerts/{hot['id']}")[1]
    assert (cleared["acknowledged_by"], cleared["ack_note"]) == ("ops", "replacing the fan")


def test_a_killed_server_replays_to_the_same_alerts_and_events(
    start: Callable[..., ServerProcess], store_args: tuple[str, ...]
) -> None:
    # One checkpoint right after start, none after: the restart replays everything below from the log.
    env = {"FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.1", "FLEETSTREAM_ENGINE__CHECKPOINT_INTERVAL_S": "3600"}
    srv = start(*store_args, env=env)
    time.sleep(1.0)  # the flusher's first round (0.1 s after start) stores that checkpoint first
    assert srv.call("POST", "/api/v1/zones", YARD)[0] == 201
    hot = {"id": "hot", "when": {"sensor": "temperature", "op": ">", "threshold": 80, "clear_at": 78}}
    assert srv.call("POST", "/api/v1/rules", hot)[0] == 201
    assert srv.call("POST", "/api/v1/rules", {"kind": "zone", "id": "stay", "zone_id": "yard"})[0] == 201
    for second, value, lat in [
        (0, 70.0, 52.5),
        (1, 85.0, 54.0),
        (2, 79.0, 52.4),
        (3, 60.0, 54.1),
        (4, 90.0, 54.2),
    ]:
        post(srv, [reading("k1", second, value), fix("k2", second, lat, 4.5)])
    wait_for(lambda: len(alerts(srv)) == 4)
    acked = f"hot:k1:{us(4)}"
    assert srv.call("POST", f"/api/v1/alerts/{acked}/ack", {"by": "ana"})[0] == 200
    found = {a["id"]: a for a in alerts(srv)}
    assert found[acked]["state"] == "acknowledged"
    expected = {
        "k1": [("alert_opened", at(1)), ("alert_cleared", at(3)), ("alert_opened", at(4))],
        "k2": [
            ("zone_entered", at(0)),
            ("zone_left", at(1)),
            ("alert_opened", at(1)),
            ("zone_entered", at(2)),
            ("alert_cleared", at(2)),
            ("zone_left", at(3)),
            ("alert_opened", at(3)),
        ],
    }
    wait_for(lambda: {d: rule_events(srv, d) for d in expected} == expected)
    srv.stop("kill")

    again = start(*store_args, data=srv.data, env=env)
    assert "replayed" in again.output()  # no checkpoint covered the readings: they were replayed
    assert {a["id"]: a for a in alerts(again)} == found
    assert {d: rule_events(again, d) for d in expected} == expected
    # The open alerts go on: the oven cools, the tracker comes back.
    post(again, [reading("k1", 5, 70.0), fix("k2", 5, 52.5, 4.5)])
    wait_for(lambda: not alerts(again, state="active") and not alerts(again, state="acknowledged"))
    assert len(alerts(again)) == 4
