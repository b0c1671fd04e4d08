"""Cluster mode, failure prediction: a worker and an api as separate processes over Tansu and
PostgreSQL score the hosts of a seeded load as the embedded `fleetstream up` does. The twins carry
the same `failure_risk`, the same `failure_predicted` alerts open for the degrading hosts, even
though the worker is SIGKILLed halfway and a new one continues from the partitions' checkpoints;
training through the api reads the workers' stored windows and the worker switches to the new
round without a restart."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetstream.domain.timeutil import us_to_iso

from ..servers import Tansu
from . import test_cluster
from ._support import ServerProcess, wait_for
from .test_cluster import Proc, start_gateway
from .test_prediction_http import DEGRADE_AT, FAIL_AT, HEALTHY, MIN, MINUTES, T0, _value

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("psycopg")
pytest.importorskip("confluent_kafka")

HOSTS = 12
SPLIT = 25  # minutes: the first worker processes the load up to here, then it is killed
IDLE_S = "8"  # the last windows close this long after the last reading (and not while a worker restarts)
Call = Callable[[str, str, Any], tuple[int, Any]]


def load() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The readings of 12 hosts (the even ones degrade from minute 20 and fall silent at 30), in
    time order, and the failures file's records for them."""
    readings, records = [], []
    for h in range(HOSTS):
        device, failing = f"host-{h:04d}", h % 2 == 0
        for m in range(FAIL_AT if failing else MINUTES):
            for k in range(2):
                for sensor in HEALTHY:
                    ts = us_to_iso(T0 + m * MIN + k * 20_000_000)
                    value = _value(sensor, m, h, failing) + k * 0.1
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
    return readings, records


def post(call: Call, readings: list[dict[str, Any]]) -> None:
    for i in range(0, len(readings), 2000):
        status, body = call("POST", "/api/v1/telemetry", readings[i : i + 2000])
        assert status in (200, 202), body


def last_end(host: int) -> str:
    """The end of the host's last window: every one of its windows is scored by then."""
    return us_to_iso(T0 + (FAIL_AT if host % 2 == 0 else MINUTES) * MIN)


def outcome(call: Call) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every host's `failure_risk` once its last window is scored, and the failure_predicted alerts."""

    def risk(device: str) -> Any:
        status, body = call("GET", f"/api/v1/devices/{device}", None)
        return body.get("failure_risk") if status == 200 else None

    risks = {}
    for h in range(HOSTS):
        device = f"host-{h:04d}"
        risks[device] = wait_for(
            lambda d=device, h=h: (r := risk(d)) and r["at"] == last_end(h) and r, timeout=60, interval=0.3
        )
    time.sleep(2)  # the embedded engine stores alerts every flush (0.5 s here), after the risk changed
    found = call("GET", "/api/v1/alerts?rule_id=failure_predicted&limit=1000", None)[1]["alerts"]
    return risks, sorted(found, key=lambda a: a["id"])


def test_cluster_workers_score_and_alert_as_the_embedded_engine_across_a_takeover(
    tmp_path: Path,
    postgres_url: str,
    module_tansu: Tansu,
    start: Callable[..., ServerProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(test_cluster.ENV, "FLEETSTREAM_STREAM__IDLE_TIMEOUT_S", IDLE_S)
    monkeypatch.setitem(test_cluster.ENV, "FLEETSTREAM_PREDICTOR__RELOAD_S", "1")
    readings, records = load()
    first = [r for r in readings if r["ts"] < us_to_iso(T0 + SPLIT * MIN)]
    rest = readings[len(first) :]

    embedded = start(env=dict(test_cluster.ENV))
    post(lambda m, p, b: embedded.call(m, p, b), readings)
    want_risks, want_alerts = outcome(lambda m, p, b: embedded.call(m, p, b))
    embedded.stop()
    # the shipped model keeps alerts open for failing hosts of this load, not for healthy ones
    still_open = {a["device_id"] for a in want_alerts if a["state"] == "active"}
    assert still_open
    assert still_open <= {f"host-{h:04d}" for h in range(0, HOSTS, 2)}
    assert all(a["rule_id"] == "failure_predicted" for a in want_alerts)

    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", postgres_url)
    api = start_gateway(tmp_path, bus, "api", "--store", postgres_url)

    def cluster(method: str, path: str, body: Any) -> tuple[int, Any]:
        status, answer, _ = api.call(method, path, body)
        return status, answer

    try:
        status, predictor = cluster("GET", "/api/v1/models/train", None)
        assert (status, predictor["enabled"], predictor["model"]["round"]) == (200, True, None)
        post(cluster, first)
        # the first worker has scored and checkpointed the minutes before the split: kill it there
        wait_for(
            lambda: (
                (r := cluster("GET", "/api/v1/devices/host-0001", None)[1].get("failure_risk"))
                and r["at"] >= us_to_iso(T0 + (SPLIT - 2) * MIN)
            ),
            timeout=60,
            interval=0.2,
        )
        worker.stop(kill=True)
        worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", postgres_url)
        post(cluster, rest)
        got_risks, got_alerts = outcome(cluster)
        assert got_risks == want_risks
        keys = ("id", "device_id", "rule_id", "severity", "state", "opened_at", "cleared_at")
        assert [{k: a[k] for k in keys} for a in got_alerts] == [{k: a[k] for k in keys} for a in want_alerts]
        events = cluster(
            "GET", f"/api/v1/devices/{got_alerts[0]['device_id']}/events?type=alert_opened", None
        )
        assert [e["payload"]["alert_id"] for e in events[1]["events"]] == [
            a["id"] for a in got_alerts if a["device_id"] == got_alerts[0]["device_id"]
        ]
        scores = cluster("GET", "/api/v1/models/scores?limit=3", None)[1]
        ranked = sorted(want_risks.items(), key=lambda kv: (-kv[1]["score"], kv[0]))[:3]
        assert [(d["device_id"], d["score"]) for d in scores["devices"]] == [
            (d, r["score"]) for d, r in ranked
        ]
        active = {a["device_id"] for a in want_alerts if a["state"] == "active"}
        assert [d["alert"] for d in scores["devices"]] == [d in active for d, _ in ranked]

        # training through the api reads the windows the workers stored; the worker takes the round
        failures = tmp_path / "failures.jsonl"
        failures.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        assert cluster("POST", "/api/v1/models/train", {"rounds": 2})[0] == 422  # no simulator here
        started = cluster(
            "POST", "/api/v1/models/train", {"rounds": 3, "sites": 2, "failures": str(failures)}
        )
        assert started[0] == 202, started
        done = wait_for(
            lambda: (
                (s := cluster("GET", "/api/v1/models/train", None)[1])["training"]["state"] != "running" and s
            ),
            timeout=60,
        )
        assert done["training"]["state"] == "done", done
        assert (done["training"]["rounds"], done["model"]["round"]) == ([1, 2, 3], 3)
        assert cluster("GET", "/api/v1/models", None)[1]["latest"] == 3
        wait_for(lambda: "now model round 3" in worker.output(), timeout=10)
    finally:
        assert api.stop() == 0, api.output()
        assert worker.stop() == 0, worker.output()
