"""``fleetstream gateway`` serves ``/metrics``: what it did with requests, how its publishes to the
bus went, and whether the broker answers (the gateway had no /metrics at all: a 404)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..servers import Tansu
from .test_cluster import Proc, reading, start_gateway

pytestmark = [pytest.mark.integration]

pytest.importorskip("confluent_kafka")


@pytest.fixture
def broker() -> Iterator[Tansu]:
    """A Tansu of this test's own, since the test stops it."""
    tansu = Tansu.launch()
    try:
        yield tansu
    finally:
        tansu.close()


def scrape(gw: Proc) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def gateway_samples(samples: dict[str, float]) -> dict[str, float]:
    prefix = "fleetstream_gateway_"
    return {
        k[len(prefix) :]: v
        for k, v in samples.items()
        if k.startswith(prefix) and k != prefix + "publish_seconds_total"
    }


def test_gateway_metrics_count_requests_readings_publishes_and_the_broker(
    tmp_path: Path, broker: Tansu
) -> None:
    gw = start_gateway(tmp_path, f"kafka://{broker.bootstrap}?partitions=2")
    try:
        body = [reading("m-1", 1, 1.0), reading("m-2", 1, 2.0), {**reading("m-3", 1, 0.0), "value": "warm"}]
        status, answer, _ = gw.call("POST", "/api/v1/telemetry", body)
        assert (status, answer["accepted"], len(answer["rejected"])) == (202, 2, 1)
        first = scrape(gw)
        assert gateway_samples(first) == {
            "requests_total": 1,
            "messages_accepted_total": 2,
            "readings_accepted_total": 2,
            "rejected_total": 1,
            "out_of_range_total": 0,
            "publishes_total": 1,
            "publish_failures_total": 0,
            "broker_up": 1,
        }
        assert 0 < first["fleetstream_gateway_publish_seconds_total"] < 3  # the ack timeout bounds it

        broker.stop()
        status, _, _ = gw.call("POST", "/api/v1/telemetry", [reading("m-1", 2, 3.0)])
        assert status == 503
        down = gateway_samples(scrape(gw))
        assert down == {
            "requests_total": 2,
            "messages_accepted_total": 2,  # nothing acknowledged while the broker is down
            "readings_accepted_total": 2,
            "rejected_total": 1,
            "out_of_range_total": 0,
            "publishes_total": 2,
            "publish_failures_total": 1,  # the 503
            "broker_up": 0,
        }
    finally:
        assert gw.stop() == 0, gw.output()
