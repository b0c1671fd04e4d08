"""Cluster mode, rules and single-writer changes: a worker and an api as separate processes over
Tansu and PostgreSQL. Rules made through the api apply in the worker within about a second; the
alert they open is stored, streamed by the api and sent to the rule's webhook; an acknowledgement
and a shadow update travel to the owning worker and answer with the embedded statuses; a worker
restart keeps the alert (acknowledged) and clears it on the next cool reading."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..servers import Tansu
from ._support import iso, sse_frames, wait_for
from .test_alerts_http import Receiver
from .test_cluster import Proc, start_gateway

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("psycopg")
pytest.importorskip("confluent_kafka")

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
HOT = {"id": "hot", "severity": "critical", "when": {"sensor": "t", "op": ">", "threshold": 80}}


def reading(device: str, second: float, value: float) -> dict[str, Any]:
    return {
        "device_id": device,
        "timestamp": iso(T0 + timedelta(seconds=second)),
        "sensor": "t",
        "value": value,
    }


@contextlib.contextmanager
def alert_stream(api: Proc) -> Iterator[list[dict[str, Any]]]:
    """The ``alert`` frames of the api's ``/api/v1/stream/alerts``, gathered by a thread."""
    frames: list[dict[str, Any]] = []
    connected = threading.Event()
    client = httpx.Client(timeout=60)

    def follow() -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            client.stream("GET", f"http://127.0.0.1:{api.port}/api/v1/stream/alerts") as r,
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


def alerts(api: Proc, query: str = "") -> list[dict[str, Any]]:
    status, body, _ = api.call("GET", f"/api/v1/alerts{query}")
    assert status == 200, body
    return list(body["alerts"])


def patch(api: Proc, path: str, body: Any, if_match: str | None = None) -> httpx.Response:
    headers = {"If-Match": if_match} if if_match else {}
    return httpx.patch(f"http://127.0.0.1:{api.port}{path}", json=body, headers=headers, timeout=20)


def test_rules_alerts_acks_and_shadow_updates_work_across_processes(
    tmp_path: Path, postgres_url: str, module_tansu: Tansu
) -> None:
    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", postgres_url)
    api = start_gateway(tmp_path, bus, "api", "--store", postgres_url)
    hooks = Receiver()
    try:
        # the device is known (its twin stored) before any rule exists
        assert api.call("POST", "/api/v1/telemetry", [reading("d-1", 0, 20.0)])[0] == 202
        wait_for(lambda: api.call("GET", "/api/v1/devices/d-1")[0] == 200, timeout=30, interval=0.2)

        # definitions: the embedded statuses
        bad = {"id": "x", "when": {"sensor": "t", "op": "=~", "threshold": 1}}
        assert api.call("POST", "/api/v1/rules", bad)[0] == 422
        assert api.call("GET", "/api/v1/rules/nope")[0] == 404
        created = api.call("POST", "/api/v1/rules", {**HOT, "webhook": hooks.url("/hot")})
        assert created[0] == 201, created
        assert api.call("POST", "/api/v1/rules", HOT)[0] == 409
        assert [r["id"] for r in api.call("GET", "/api/v1/rules")[1]["rules"]] == ["hot"]
        yard = {"id": "yard", "rectangle": {"south": 0, "west": 0, "north": 1, "east": 1}}
        assert api.call("POST", "/api/v1/zones", yard)[0] == 201
        stay = {"id": "stay", "kind": "zone", "zone_id": "yard", "must": "stay_inside"}
        assert api.call("POST", "/api/v1/rules", {**stay, "zone_id": "nowhere"})[0] == 422
        assert api.call("POST", "/api/v1/rules", stay)[0] == 201
        assert api.call("DELETE", "/api/v1/zones/yard")[0] == 409  # used by a rule
        assert httpx.delete(f"http://127.0.0.1:{api.port}/api/v1/rules/stay").status_code == 204
        assert httpx.delete(f"http://127.0.0.1:{api.port}/api/v1/zones/yard").status_code == 204

        with alert_stream(api) as frames:
            # hot readings until the worker has the rule: it must within about a second
            made = time.monotonic()
            second = 1.0
            while not alerts(api, "?state=active"):
                assert time.monotonic() - made < 3.0, worker.output()
                assert api.call("POST", "/api/v1/telemetry", [reading("d-1", second, 90.0)])[0] == 202
                second += 1
                time.sleep(0.2)
            (opened,) = alerts(api)
            assert (opened["device_id"], opened["rule_id"], opened["state"]) == ("d-1", "hot", "active")
            assert opened["first_value"] == 90.0
            wait_for(lambda: [f["event"] for f in frames] == ["opened"], timeout=5)
            assert frames[0]["alert"]["id"] == opened["id"]
            wait_for(lambda: [p for p, _ in hooks.received] == ["/hot"], timeout=5)
            assert hooks.received[0][1]["event"] == "opened"

            # an acknowledgement travels to the worker and answers once stored
            assert api.call("POST", "/api/v1/alerts/hot:d-1:1/ack", {"by": "ana"})[0] == 404
            status, acked, _ = api.call(
                "POST", f"/api/v1/alerts/{opened['id']}/ack", {"by": "ana", "note": "fan"}
            )
            assert status == 200, acked
            assert (acked["state"], acked["acknowledged_by"], acked["ack_note"]) == (
                "acknowledged",
                "ana",
                "fan",
            )
            assert [a["id"] for a in alerts(api, "?state=acknowledged")] == [opened["id"]]
            wait_for(lambda: [f["event"] for f in frames] == ["opened", "acknowledged"], timeout=5)

        # a shadow update travels the same way, with the embedded statuses
        answer = patch(api, "/api/v1/devices/d-1/desired", {"fan": "high"})
        assert answer.status_code == 200, answer.text
        assert (answer.json()["desired"], answer.json()["changed"]) == ({"fan": "high"}, True)
        assert answer.headers["ETag"] == '"1"'
        assert patch(api, "/api/v1/devices/d-1/desired", {"fan": "low"}, if_match='"7"').status_code == 412
        assert patch(api, "/api/v1/devices/nobody/desired", {"fan": "low"}).status_code == 404
        assert patch(api, "/api/v1/devices/d-1/desired", [1, 2]).status_code == 422
        assert api.call("GET", "/api/v1/devices/d-1/desired")[1]["desired"] == {"fan": "high"}

        # a new worker restores the alert, acknowledged, and clears it on a cool reading
        assert worker.stop() == 0, worker.output()
        worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", postgres_url)
        assert api.call("POST", "/api/v1/telemetry", [reading("d-1", second + 1, 50.0)])[0] == 202
        (cleared,) = wait_for(lambda: alerts(api, "?state=cleared"), timeout=30, interval=0.2)
        assert (cleared["id"], cleared["acknowledged_by"]) == (opened["id"], "ana")
        status, body, _ = api.call("POST", f"/api/v1/alerts/{opened['id']}/ack", {"by": "bo"})
        assert status == 409, body
        wait_for(lambda: [b["event"] for _, b in hooks.received] == ["opened", "cleared"], timeout=5)
        # without a worker, a change is refused once the ingest timeout (3 s here) passed, and withdrawn
        assert worker.stop() == 0, worker.output()
        started = time.monotonic()
        refused = patch(api, "/api/v1/devices/d-1/desired", {"fan": "off"})
        assert refused.status_code == 503, refused.text
        assert 3.0 <= time.monotonic() - started < 6.0
        assert "no worker applied the change within 3 s" in refused.json()["error"]["message"]
        assert refused.headers["Retry-After"] == "1"
        assert httpx.delete(f"http://127.0.0.1:{api.port}/api/v1/rules/hot").status_code == 204
        assert api.call("GET", "/api/v1/rules")[1]["rules"] == []
    finally:
        hooks.close()
        assert api.stop() == 0, api.output()
        assert worker.stop() == 0, worker.output()
