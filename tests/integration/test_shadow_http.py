"""The device shadow over real HTTP: merge patches, If-Match, long-poll, SSE, restarts, as_of."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from ._support import ServerProcess, reading, sse_frames

pytestmark = pytest.mark.integration


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(15.0)) as c:
        yield c


def _seen(srv: ServerProcess, device: str) -> None:
    """Send one reading and wait until the device's twin exists."""
    status, body = srv.call("POST", "/api/v1/telemetry?wait=true", [reading(device, 0, 21.5)])
    assert status in (200, 202), body
    deadline = time.monotonic() + 10
    while srv.call("GET", f"/api/v1/devices/{device}")[0] != 200:
        assert time.monotonic() < deadline, "the device never showed up"
        time.sleep(0.05)


def _patch(
    client: httpx.Client, srv: ServerProcess, device: str, section: str, body: Any, **headers: str
) -> httpx.Response:
    return client.patch(
        f"{srv.url}/api/v1/devices/{device}/{section}",
        json=body,
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def test_merge_patches_versions_and_delta(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    srv = shared_server
    _seen(srv, dev)
    before = datetime.now(UTC)
    r = _patch(client, srv, dev, "desired", {"interval_s": 5, "led": {"on": True, "color": "red"}})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == '"1"'
    body = r.json()
    assert body["changed"] is True
    assert body["desired"] == {"interval_s": 5, "led": {"on": True, "color": "red"}}
    assert body["delta"] == body["desired"]
    assert (body["desired_version"], body["reported_version"]) == (1, 0)
    set_at = datetime.fromisoformat(body["metadata"]["desired"]["interval_s"])
    assert before <= set_at <= datetime.now(UTC)
    assert body["metadata"]["desired"]["led"] == {"on": body["metadata"]["desired"]["interval_s"]} | {
        "color": body["metadata"]["desired"]["interval_s"]
    }

    # null deletes, nested objects merge; If-Match with the ETag of the last answer
    r = _patch(client, srv, dev, "desired", {"led": {"color": None, "level": 3}}, if_match='"1"')
    assert r.status_code == 200, r.text
    assert r.json()["desired"] == {"interval_s": 5, "led": {"on": True, "level": 3}}
    assert r.headers["etag"] == '"2"'

    # A stale version: 412 naming the current one, and nothing changes
    r = _patch(client, srv, dev, "desired", {"interval_s": 9}, if_match="1")
    assert r.status_code == 412, r.text
    assert r.json()["error"]["code"] == "precondition_failed"
    assert r.json()["error"]["details"] == {"version": 2, "expected": 1}

    # The device reports: the delta keeps only what it has not done (5.0 equals 5, 1 is not true)
    r = _patch(client, srv, dev, "reported", {"interval_s": 5.0, "led": {"on": 1, "level": 3}})
    assert r.status_code == 200, r.text
    assert r.json()["delta"] == {"led": {"on": True}}
    assert r.headers["etag"] == '"1"'
    r = _patch(client, srv, dev, "reported", {"led": {"on": True}})
    assert r.json()["delta"] == {}

    # Re-reporting the same state changes nothing: no version, no event
    r = _patch(client, srv, dev, "reported", {"interval_s": 5})
    assert (r.json()["changed"], r.json()["reported_version"]) == (False, 2)

    # The twin shows the shadow; its version counts the shadow's events
    status, twin = srv.call("GET", f"/api/v1/devices/{dev}")
    assert status == 200
    assert twin["shadow"]["desired"] == {"interval_s": 5, "led": {"on": True, "level": 3}}
    assert twin["shadow"]["reported"] == {"interval_s": 5.0, "led": {"on": True, "level": 3}}
    status, events = srv.call(
        "GET", f"/api/v1/devices/{dev}/events?type=desired_changed&type=reported_changed"
    )
    assert [(e["type"], e["payload"]["version"]) for e in events["events"]] == [
        ("desired_changed", 1),
        ("desired_changed", 2),
        ("reported_changed", 1),
        ("reported_changed", 2),
    ]
    assert events["events"][1]["payload"]["patch"] == {"led": {"color": None, "level": 3}}


def test_bad_updates_are_4xx(shared_server: ServerProcess, client: httpx.Client, dev: str) -> None:
    srv = shared_server
    r = _patch(client, srv, f"{dev}-never", "desired", {"interval_s": 5})
    assert r.status_code == 404, r.text
    _seen(srv, dev)
    deep: dict[str, Any] = {"x": 1}
    for _ in range(8):
        deep = {"n": deep}
    cases: list[tuple[Any, int, str]] = [
        ([1, 2], 422, "must be a JSON object, got array"),
        ("on", 422, "got string"),
        (deep, 422, "nest at most 8 deep"),
        ({"blob": "x" * 9000}, 422, "at most 8192 bytes"),
        ({"": 1}, 422, "keys must have 1 to 128 characters"),
    ]
    for body, status, text in cases:
        r = _patch(client, srv, dev, "desired", body)
        assert r.status_code == status, (body, r.text)
        assert text in r.json()["error"]["message"]
    r = client.patch(
        f"{srv.url}/api/v1/devices/{dev}/desired",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    r = _patch(client, srv, dev, "desired", {"a": 1}, if_match="yesterday")
    assert r.status_code == 400, r.text
    r = client.patch(
        f"{srv.url}/api/v1/devices/{dev}/desired", content=b"a=1", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415, r.text
    # a merge-patch content type is accepted
    r = client.patch(
        f"{srv.url}/api/v1/devices/{dev}/desired",
        content=b'{"a": 1}',
        headers={"content-type": "application/merge-patch+json"},
    )
    assert (r.status_code, r.json()["desired"]) == (200, {"a": 1})


def test_long_poll_wakes_on_a_change_and_times_out_with_304(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    srv = shared_server
    _seen(srv, dev)
    r = client.get(f"{srv.url}/api/v1/devices/{dev}/desired")
    assert (r.status_code, r.json()["version"], r.json()["desired"], r.headers["etag"]) == (200, 0, {}, '"0"')
    assert (
        client.get(f"{srv.url}/api/v1/devices/{dev}/desired", headers={"if-none-match": '"0"'}).status_code
        == 304
    )

    began = time.monotonic()
    r = client.get(f"{srv.url}/api/v1/devices/{dev}/desired?version=0&wait=0.5")
    assert r.status_code == 304
    assert 0.5 <= time.monotonic() - began < 3

    answers: list[httpx.Response] = []

    def poll() -> None:
        with httpx.Client(timeout=20) as c:
            answers.append(c.get(f"{srv.url}/api/v1/devices/{dev}/desired?version=0&wait=15"))

    waiter = threading.Thread(target=poll)
    began = time.monotonic()
    waiter.start()
    time.sleep(0.5)
    assert not answers  # still waiting
    assert _patch(client, srv, dev, "desired", {"interval_s": 2}).status_code == 200
    waiter.join(10)
    took = time.monotonic() - began
    assert answers
    assert answers[0].status_code == 200
    assert answers[0].json()["desired"] == {"interval_s": 2}
    assert answers[0].json()["version"] == 1
    assert took < 5
    # asking with an older version answers at once
    r = client.get(f"{srv.url}/api/v1/devices/{dev}/desired?version=0&wait=15")
    assert (r.status_code, r.json()["version"]) == (200, 1)


def test_sse_sends_the_document_then_every_change(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    srv = shared_server
    _seen(srv, dev)
    _patch(client, srv, dev, "desired", {"mode": "eco"})
    with client.stream("GET", f"{srv.url}/api/v1/devices/{dev}/desired/stream") as response:
        assert response.status_code == 200
        frames = (f for f in sse_frames(response.iter_bytes()) if f["event"] == "desired")
        first = next(frames)["data"]
        assert first == {"device_id": dev, "version": 1, "desired": {"mode": "eco"}}
        _patch(client, srv, dev, "desired", {"mode": None, "interval_s": 3})
        assert next(frames)["data"] == {"device_id": dev, "version": 2, "desired": {"interval_s": 3}}
        _patch(client, srv, dev, "desired", {"interval_s": 4})
        assert next(frames)["data"]["desired"] == {"interval_s": 4}


def test_a_restart_even_a_kill_keeps_the_shadow(
    start: Callable[..., ServerProcess], client: httpx.Client, dev: str
) -> None:
    srv = start()
    _seen(srv, dev)
    r = _patch(client, srv, dev, "desired", {"interval_s": 5, "led": {"on": True}})
    assert r.status_code == 200
    between = datetime.now(UTC)
    time.sleep(0.01)
    _patch(client, srv, dev, "desired", {"led": None})
    _patch(client, srv, dev, "reported", {"interval_s": 5})
    # telemetry after the shadow change must replay on top of it
    srv.call("POST", "/api/v1/telemetry?wait=true", [reading(dev, 1, 22.5)])
    shadow = srv.call("GET", f"/api/v1/devices/{dev}")[1]["shadow"]
    srv.stop("kill")

    again = start(data=srv.data)
    status, twin = again.call("GET", f"/api/v1/devices/{dev}")
    assert status == 200, twin
    assert twin["shadow"] == shadow
    assert twin["shadow"]["desired"] == {"interval_s": 5}
    assert twin["shadow"]["delta"] == {}
    # as it was between the two desired changes, rebuilt from the event log
    stamp = between.isoformat().replace("+00:00", "Z")
    status, old = again.call("GET", f"/api/v1/devices/{dev}?as_of={stamp}")
    assert status == 200, old
    assert old["shadow"]["desired"] == {"interval_s": 5, "led": {"on": True}}
    assert old["shadow"]["reported"] == {}
    # and the versions go on from where they were
    r = _patch(client, again, dev, "desired", {"interval_s": 6}, if_match="2")
    assert (r.status_code, r.headers["etag"]) == (200, '"3"')


def test_if_match_takes_the_twins_etag_too(
    shared_server: ServerProcess, client: httpx.Client, dev: str
) -> None:
    srv = shared_server
    _seen(srv, dev)
    twin = client.get(f"{srv.url}/api/v1/devices/{dev}")
    etag = twin.headers["etag"]
    r = _patch(client, srv, dev, "desired", {"interval_s": 7}, if_match=etag)
    assert r.status_code == 200, r.text
    # The shadow change moved the twin on: its old ETag no longer holds, and the 412 names the new one
    r = _patch(client, srv, dev, "desired", {"interval_s": 8}, if_match=etag)
    assert r.status_code == 412, r.text
    now = client.get(f"{srv.url}/api/v1/devices/{dev}").headers["etag"]
    assert r.json()["error"]["details"] == {"etag": now}
    assert client.get(f"{srv.url}/api/v1/devices/{dev}/desired").json()["desired"] == {"interval_s": 7}
    r = _patch(client, srv, dev, "desired", {"interval_s": 8}, if_match="v-1")
    assert r.status_code == 400, r.text
