"""The same load over HTTP into a server on DuckDB and one on PostgreSQL: every query endpoint
answers the same (floats up to summation order), windows, late updates, device events, alerts, rules
and zones included."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from ._support import ServerProcess, query, wait_for

pytestmark = pytest.mark.integration

DAY = "2024-03-30"
FAST = {"FLEETSTREAM_ENGINE__FLUSH_INTERVAL_S": "0.1", "FLEETSTREAM_ENGINE__CHECKPOINT_INTERVAL_S": "0.2"}


def at(second: int) -> str:
    hours, rest = divmod(second, 3600)
    return f"{DAY}T{20 + hours:02d}:{rest // 60:02d}:{rest % 60:02d}Z"


def load() -> list[list[dict[str, Any]]]:
    """Batches: three devices over ten minutes (10 s apart, out of order within each batch), a
    re-sent batch, then a reading late for its closed 10 s window (a second version) and one too late
    for any window, with a msg id."""
    rng = random.Random(11)
    readings = [
        {"device_id": d, "timestamp": at(t), "sensor": s, "value": round(rng.uniform(-5, 40), 2)}
        for t in range(0, 600, 10)
        for d in ("pa", "pb", "pc")
        for s in (("temperature", "humidity") if d == "pa" else ("temperature",))
    ]
    batches = [readings[i : i + 25] for i in range(0, len(readings), 25)]
    for batch in batches:
        rng.shuffle(batch)
    late = [
        {"device_id": "pb", "timestamp": at(575), "sensor": "temperature", "value": 99.5},
        {"device_id": "pc", "timestamp": at(41), "temperature": -3.25, "msg_id": "late-1"},
    ]
    return [*batches, batches[3], late]


def compared(value: Any) -> Any:
    """Floats rounded to 9 significant digits: the stores sum in different orders."""
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: compared(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compared(v) for v in value]
    return value


GETS = [
    query("/api/v1/metrics", from_=at(0), to=at(700), agg="count,min,max,avg,sum,stddev,p50,p95,p99"),
    query("/api/v1/metrics", device_id=["pa", "pc"], from_=at(30), to=at(460)),
    query("/api/v1/series", from_=at(0), to=at(700), bucket="7s", agg="count,min,max,avg,p50"),
    query(
        "/api/v1/series",
        from_=f"{DAY}T00:00:00Z",
        to="2024-04-02T00:00:00Z",
        bucket="1d",
        tz="Europe/Amsterdam",
    ),
    query(
        "/api/v1/series", from_="2024-03-20T00:00:00Z", to="2024-04-02T00:00:00Z", bucket="7d", agg="count"
    ),
    query("/api/v1/windows", from_=at(0), to=at(700), size="10s"),
    query("/api/v1/windows", from_=at(0), to=at(700), size="10s", device_id="pb", sensor="temperature"),
    query("/api/v1/devices"),
    query("/api/v1/devices", type="sensor", limit=2, offset=1),
    query("/api/v1/devices/pb/events"),
    query("/api/v1/devices/pc", as_of=at(300)),
]
# Answered from PostgreSQL's per-minute rollups (whole minutes) and raw rows (the partial edges).
ROLLUP_GETS = [
    query("/api/v1/metrics", from_=at(5), to=at(455), agg="count,min,max,avg,mean,sum,stddev"),
    query("/api/v1/metrics", sensor="temperature", from_=at(0), to=at(600), agg="count,sum,stddev"),
]
COMPUTE = {
    "temperature": ["count", "min", "max", "average"],
    "from": f"{DAY} 20:00:05",
    "to": f"{DAY} 20:07:35",
}
HOT = {
    "id": "hot",
    "name": "Hot",
    "when": {"sensor": "temperature", "op": ">", "threshold": 35, "clear_at": 30},
}
YARD = {"id": "yard", "rectangle": {"south": 52.0, "west": 4.0, "north": 53.0, "east": 5.0}}
ALERT_GETS = [
    query("/api/v1/alerts", limit=1000),
    query("/api/v1/alerts", device_id="pb", state="cleared"),
    query("/api/v1/alerts", rule_id="hot", from_=at(100), to=at(400), limit=3, offset=2),
    "/api/v1/rules",
    "/api/v1/zones",
    "/api/v1/models",
]


def test_duckdb_and_postgresql_answer_every_query_the_same(
    start: Callable[..., ServerProcess], postgres_url: str, tmp_path: Any
) -> None:
    duck = start(data=tmp_path / "duck", env=FAST)
    pg = start("--store", postgres_url, data=tmp_path / "pg", env=FAST)
    for srv in (duck, pg):
        assert srv.call("POST", "/api/v1/rules", HOT)[0] == 201
        assert srv.call("POST", "/api/v1/zones", YARD)[0] == 201
    for batch in load():
        for srv in (duck, pg):
            status, body = srv.call("POST", "/api/v1/telemetry", batch)
            assert status == 202, body

    def windows_of(srv: ServerProcess) -> Any:
        status, body = srv.call("GET", GETS[5])
        late = [w for w in body["windows"] if w["version"] > 1] if status == 200 else []
        return body if late else None

    # Windows and events are stored at each flush: wait until both hold the late update.
    wait_for(lambda: windows_of(duck) and windows_of(pg), timeout=20)
    answers = []
    for path in GETS:
        d_status, d_body = duck.call("GET", path)
        p_status, p_body = pg.call("GET", path)
        assert (d_status, p_status) == (200, 200), (path, d_body, p_body)
        assert compared(p_body) == compared(d_body), path
        answers.append(p_body)
    # Each answer holds what it should, so the equality above compared something.
    metrics, _, seven, days, weeks, fleet, pb, devices, page, events, as_of = answers
    assert (metrics["metrics"]["temperature"]["count"], metrics["metrics"]["humidity"]["count"]) == (181, 60)
    assert [p["t"] for p in days["series"]["temperature"]] == ["2024-03-30T00:00:00+01:00"]
    assert [p["t"] for p in weeks["series"]["temperature"]] == ["2024-03-25T00:00:00Z"]  # a Monday
    assert seven["series"]["humidity"][0]["t"] == "2024-03-30T19:59:57Z"  # 7 s buckets from the epoch
    assert len(fleet["windows"]) > 100
    assert [w["start"] for w in pb["windows"] if w["version"] == 2] == [at(570)]
    assert [d["device_id"] for d in devices["devices"]] == ["pa", "pb", "pc"]
    assert (page["total"], [d["device_id"] for d in page["devices"]]) == (3, ["pb", "pc"])
    assert [e["type"] for e in events["events"][:2]] == ["registered", "status_changed"]
    assert as_of["last_seen"] == at(300)

    # The rollup path: counts checked against the load (the re-sent batch once; the late pb reading at
    # 575 s; the pc item at 41 s has no tag and was rejected), the rest against DuckDB.
    rolled = []
    for path in ROLLUP_GETS:
        d_status, d_body = duck.call("GET", path)
        p_status, p_body = pg.call("GET", path)
        assert (d_status, p_status) == (200, 200), (path, d_body, p_body)
        assert compared(p_body) == compared(d_body), path
        rolled.append(p_body["metrics"])
    assert {s: m["count"] for s, m in rolled[0].items()} == {"temperature": 3 * 45, "humidity": 45}
    assert rolled[1]["temperature"]["count"] == 3 * 60 + 1
    d_status, d_body = duck.call("POST", "/compute/metrics", COMPUTE)
    p_status, p_body = pg.call("POST", "/compute/metrics", COMPUTE)
    assert (d_status, p_status) == (200, 200), (d_body, p_body)
    assert compared(p_body) == compared(d_body)
    assert p_body["result"]["temperature"]["count"] == 3 * 45

    alert_answers = []
    for path in ALERT_GETS:
        d_status, d_body = duck.call("GET", path)
        p_status, p_body = pg.call("GET", path)
        assert (d_status, p_status) == (200, 200), (path, d_body, p_body)
        assert p_body == d_body, path
        alert_answers.append(p_body)
    every, pb_cleared, page_of_hot, rules, zones, models = alert_answers
    assert every["total"] == len(every["alerts"]) > 10
    assert {a["state"] for a in every["alerts"]} == {"active", "cleared"}
    assert pb_cleared["total"] > 0
    assert all((a["device_id"], a["state"]) == ("pb", "cleared") for a in pb_cleared["alerts"])
    assert len(page_of_hot["alerts"]) == 3
    assert (rules["rules"], zones["zones"], models) == ([HOT], [YARD], {"models": [], "latest": None})
    # A NUL character PostgreSQL cannot store: refused alike by both, the rest of the batch kept.
    nul = [
        {"device_id": "pa", "timestamp": at(650), "sensor": "temperature", "value": 1.0},
        {"device_id": "pa", "timestamp": at(651), "sensor": "temp\u0000", "value": 1.0},
    ]
    d_answer, p_answer = (
        duck.call("POST", "/api/v1/telemetry", nul),
        pg.call("POST", "/api/v1/telemetry", nul),
    )
    assert d_answer == p_answer
    assert d_answer[1]["rejected"] == [
        {"index": 1, "error": "sensor: NUL characters (\\u0000) are not allowed"}
    ]
    newest = every["alerts"][0]["id"]
    assert duck.call("GET", f"/api/v1/alerts/{newest}") == pg.call("GET", f"/api/v1/alerts/{newest}")
