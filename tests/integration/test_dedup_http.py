"""At-least-once senders + dedup = each reading stored once: re-sends, msg ids, old re-sends, restarts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from ._support import T0, ServerProcess, at, db_path, metrics, prometheus, read_db, reading, stop_cleanly

pytestmark = pytest.mark.integration

# A 120 s dedup horizon: 5 s out-of-orderness + 115 s allowed lateness.
HORIZON = {"FLEETSTREAM_STREAM__ALLOWED_LATENESS_S": "115"}
HOUR = 3600


def _counts(srv: ServerProcess, device: str) -> dict[str, int]:
    found = metrics(srv, device, agg="count", end=T0 + timedelta(days=2))
    return {sensor: row["count"] for sensor, row in found.items()}


def _post(srv: ServerProcess, batch: Any) -> None:
    status, body = srv.call("POST", "/api/v1/telemetry", batch)
    n = len(batch) if isinstance(batch, list) else 1
    assert (status, body) == (202, {"accepted": n, "rejected": []})


def _batch(device: str) -> list[dict[str, Any]]:
    return [
        reading(device, 0, 20.0),
        reading(device, 1, 21.0),
        {"device_id": device, "timestamp": at(2), "humidity": 40, "tag": "Hygrometer"},
        {"device_id": device, "type": "heartbeat", "ts": at(3), "event": {"cpu_usage": 5, "mem_usage": 6}},
        {"device_id": device, "type": "startup", "ts": at(4)},
    ]


@pytest.fixture(scope="module")
def dedup_server(
    tmp_path_factory: pytest.TempPathFactory, launch_server: Callable[..., ServerProcess]
) -> Any:
    """A server with a dedup horizon of 120 s of event time."""
    srv = launch_server(tmp_path_factory.mktemp("dedup") / "data", "--no-simulator", env=HORIZON)
    try:
        yield srv
    finally:
        srv.stop()


def test_resent_batch_is_stored_once(dedup_server: ServerProcess, dev: str) -> None:
    before = prometheus(dedup_server)
    for _ in range(3):
        _post(dedup_server, _batch(dev))  # the sender is answered 202 each time

    after = prometheus(dedup_server)
    assert _counts(dedup_server, dev) == {"cpu_usage": 1, "humidity": 1, "mem_usage": 1, "temperature": 2}
    # 5 readings + the startup event, twice re-sent
    assert after["fleetstream_duplicates_total"] - before["fleetstream_duplicates_total"] == 12
    assert after["fleetstream_readings_total"] - before["fleetstream_readings_total"] == 5
    assert after["fleetstream_messages_total"] - before["fleetstream_messages_total"] == 5


def test_repeat_inside_one_batch_is_stored_once(dedup_server: ServerProcess, dev: str) -> None:
    _post(
        dedup_server, [reading(dev, 0, 1.0), reading(dev, 0, 1.0), reading(dev, 1, 2.0), reading(dev, 0, 1.0)]
    )

    assert metrics(dedup_server, dev) == {"temperature": {"count": 2, "min": 1.0, "max": 2.0, "avg": 1.5}}


def test_same_event_time_other_value_is_a_resend(dedup_server: ServerProcess, dev: str) -> None:
    """Without a msg id the key is (device, sensor, event time): the first value stays."""
    _post(dedup_server, reading(dev, 0, 1.0))
    _post(dedup_server, reading(dev, 0, 99.0))

    assert metrics(dedup_server, dev) == {"temperature": {"count": 1, "min": 1.0, "max": 1.0, "avg": 1.0}}


def test_same_msg_id_other_timestamp_counts_once(dedup_server: ServerProcess, dev: str) -> None:
    _post(dedup_server, reading(dev, 0, 1.0, msg_id="m-1"))
    _post(dedup_server, reading(dev, 30, 2.0, msg_id="m-1"))  # a re-send stamped again by the device
    _post(
        dedup_server,
        {"device_id": dev, "timestamp": at(40), "temperature": 3.0, "tag": "Thermostat", "seq": 7},
    )
    _post(
        dedup_server,
        {"device_id": dev, "timestamp": at(50), "temperature": 4.0, "tag": "Thermostat", "seq": 7},
    )
    # Different ids at one event time are different messages.
    _post(dedup_server, [reading(dev, 60, 5.0, msg_id="m-2"), reading(dev, 60, 6.0, msg_id="m-3")])

    assert metrics(dedup_server, dev) == {"temperature": {"count": 4, "min": 1.0, "max": 6.0, "avg": 3.75}}


def test_resend_older_than_the_horizon_is_still_dropped(dedup_server: ServerProcess, dev: str) -> None:
    """Event time moves an hour on (the memory forgets T); re-sends of T are found in the store."""
    _post(dedup_server, [reading(dev, 0, 1.0), reading(dev, 1, 2.0, msg_id="old-1")])
    _post(dedup_server, [reading(dev, HOUR + i, 50.0) for i in range(3)])
    before = prometheus(dedup_server)

    _post(dedup_server, reading(dev, 0, 1.0))
    _post(dedup_server, reading(dev, 5, 2.0, msg_id="old-1"))  # same id, other time
    _post(dedup_server, [reading(dev, 0, 1.0), reading(dev, 0, 1.0)])

    after = prometheus(dedup_server)
    assert _counts(dedup_server, dev) == {"temperature": 5}
    assert after["fleetstream_duplicates_total"] - before["fleetstream_duplicates_total"] == 4
    assert after["fleetstream_readings_total"] == before["fleetstream_readings_total"]


def test_new_reading_older_than_the_horizon_is_stored_once(dedup_server: ServerProcess, dev: str) -> None:
    """A late reading never seen before is not a duplicate; sent twice (in one batch too), it counts once."""
    _post(dedup_server, reading(dev, HOUR, 50.0))
    _post(dedup_server, [reading(dev, 0, 1.0), reading(dev, 0, 1.0), reading(dev, 10, 2.0)])
    _post(dedup_server, [reading(dev, 10, 2.0), reading(dev, 20, 3.0), reading(dev, HOUR, 50.0)])

    assert metrics(dedup_server, dev) == {"temperature": {"count": 4, "min": 1.0, "max": 50.0, "avg": 14.0}}


def test_dedup_survives_a_restart(start: Callable[..., ServerProcess], dev: str) -> None:
    """Re-sends after a restart, of recent (in memory again) and of old readings (in the store)."""
    srv = start(env=HORIZON)
    old = _batch(dev)
    recent = [reading(dev, HOUR + i, 30.0 + i) for i in range(4)]
    _post(srv, old)
    _post(srv, recent)
    stop_cleanly(srv)

    srv = start(data=srv.data, env=HORIZON)
    _post(srv, recent)
    _post(srv, old)
    _post(srv, [reading(dev, HOUR + 10, 40.0)])  # something new still goes in

    assert _counts(srv, dev) == {"cpu_usage": 1, "humidity": 1, "mem_usage": 1, "temperature": 7}
    samples = prometheus(srv)
    # Live totals continue across the restart (checkpointed): 9 readings before it, 1 after.
    assert (samples["fleetstream_duplicates_total"], samples["fleetstream_readings_total"]) == (10, 10)
    stop_cleanly(srv)

    assert read_db(db_path(srv), "SELECT count(*), count(DISTINCT (sensor, ts)) FROM readings") == [(10, 10)]
    assert read_db(db_path(srv), "SELECT device_id, kind FROM device_messages") == [(dev, "startup")]
