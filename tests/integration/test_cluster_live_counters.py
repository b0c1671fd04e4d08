"""A cluster api's live counters equal those of the embedded run of the same load.

``/api/v1/stats/live`` and ``/metrics`` of a ``fleetstream api`` come from the workers' per-partition
statistics on the stats topic. The counts of duplicates dropped and of messages stored were not
among them, so the api showed ``duplicates_total`` 0 whatever the load; they are now counted per
partition and checkpointed with it, so a restarted worker (or a partition's new owner) goes on from
the checkpoint instead of from 0.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from fleetstream.cluster.live import STALE_AFTER_S

from ..servers import Postgres, Tansu, free_port
from ._support import wait_for
from .test_cluster import Proc, _ready, reading, start_gateway, took

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("psycopg")
pytest.importorskip("confluent_kafka")

DEVICES = 4
SECONDS = 15
COUNTERS = ("readings_total", "messages_total", "devices", "duplicates_total", "late_total")


def load() -> list[list[dict[str, Any]]]:
    """A body per second (a reading of each device), then the first three bodies again."""
    bodies = [[reading(f"c-{d}", s, float(s * 10 + d)) for d in range(DEVICES)] for s in range(SECONDS)]
    return bodies + bodies[:3]


READINGS = DEVICES * SECONDS
DUPLICATES = 3 * DEVICES


def send(proc: Proc, bodies: list[list[dict[str, Any]]], reader: Proc | None = None) -> None:
    """Send the bodies; the first alone, until ``reader`` (the api) counts it, so the rest is
    counted as it comes (an api's live relay joins its group a moment after /readyz answers)."""
    reader = reader or proc
    for i, body in enumerate(bodies):
        status, answer, _ = proc.call("POST", "/api/v1/telemetry", body)
        assert (status, answer) == (202, {"accepted": len(body), "rejected": []})
        if i == 0:
            wait_for(lambda: live(reader)["readings_total"] == DEVICES, timeout=30, interval=0.1)


def live(proc: Proc) -> dict[str, Any]:
    status, body, _ = proc.call("GET", "/api/v1/stats/live")
    assert status == 200, body
    return dict(body["ingest"])


def prometheus(proc: Proc) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def counters(proc: Proc) -> dict[str, Any]:
    """The counters of /api/v1/stats/live, and the same of /metrics."""
    ingest = live(proc)
    samples = prometheus(proc)
    return {
        **{name: ingest[name] for name in COUNTERS},
        **{f"metrics_{name}": samples[f"fleetstream_{name}"] for name in COUNTERS},
    }


def settled(proc: Proc) -> dict[str, Any] | None:
    got = counters(proc)
    return got if got["readings_total"] == READINGS and got["duplicates_total"] == DUPLICATES else None


def test_a_cluster_apis_live_counters_equal_the_embedded_runs(
    tmp_path: Path, postgres_server: Postgres, module_tansu: Tansu
) -> None:
    expected = {"readings_total": READINGS, "messages_total": READINGS, "devices": DEVICES}
    expected |= {"duplicates_total": DUPLICATES, "late_total": 0}
    expected |= {f"metrics_{name}": value for name, value in expected.items()}

    port = free_port()
    up = Proc.run(
        tmp_path,
        "up",
        "--no-simulator",
        "--no-table",
        "--port",
        str(port),
        "--data",
        str(tmp_path / "up"),
        port=port,
    )
    try:
        wait_for(lambda: _ready(up), timeout=30, interval=0.2)
        send(up, load())
        embedded = wait_for(lambda: settled(up), timeout=30, interval=0.2)
        # readings stored in the last (complete) seconds
        assert wait_for(lambda: live(up)["rate_per_s"] > 0, timeout=5, interval=0.2)
    finally:
        assert up.stop() == 0, up.output()
    assert embedded == expected  # the load's own counts: the embedded run is the reference

    db = postgres_server.create_database()
    bus = f"kafka://{module_tansu.bootstrap}/readings-{uuid.uuid4().hex[:8]}?partitions=4"
    worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", db)
    gw = start_gateway(tmp_path, bus)
    api = start_gateway(tmp_path, bus, "api", "--store", db)
    try:
        wait_for(lambda: bool(took(worker)) and took(worker)[-1] == [0, 1, 2, 3], timeout=60, interval=0.2)
        send(gw, load(), reader=api)
        cluster = wait_for(lambda: settled(api), timeout=30, interval=0.2)
        assert cluster == embedded
        assert wait_for(lambda: live(api)["rate_per_s"] > 0, timeout=5, interval=0.2)

        # a restarted worker restores its partitions' counts from their checkpoints
        assert worker.stop() == 0, worker.output()
        worker = Proc.run(tmp_path, "worker", "--bus", bus, "--store", db)
        wait_for(lambda: bool(took(worker)) and took(worker)[-1] == [0, 1, 2, 3], timeout=60, interval=0.2)
        time.sleep(STALE_AFTER_S + 1)  # the old worker's statistics are stale by now: these are the new one's
        assert counters(api) == embedded
    finally:
        codes = [gw.stop(), api.stop(), worker.stop()]
    assert codes == [0, 0, 0], api.output()[-3000:]
