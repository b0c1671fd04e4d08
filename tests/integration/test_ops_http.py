"""Operations endpoints over real HTTP: health, readiness, Prometheus metrics, the API docs."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

import fleetstream

from ._support import ServerProcess, prometheus, reading

pytestmark = pytest.mark.integration

ENDPOINTS = {
    "/api/v1/telemetry": {"post"},
    "/api/v1/devices/{device_id}/telemetry": {"post"},
    "/api/v1/metrics": {"get"},
    "/compute/metrics": {"post"},
    "/api/v1/stats/live": {"get"},
    "/api/v1/stream": {"get"},
    "/api/devices/{device_id}/messages": {"post"},
    "/api/v1/dead-letters": {"get"},
    "/healthz": {"get"},
    "/readyz": {"get"},
    "/metrics": {"get"},
}


def _get(srv: ServerProcess, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(srv.url + path, timeout=10) as response:
        return response.status, response.headers["content-type"], response.read().decode()


def test_health_and_readiness(start: Callable[..., ServerProcess]) -> None:
    srv = start()
    assert srv.call("GET", "/healthz") == (200, {"status": "ok"})
    assert srv.call("GET", "/readyz") == (200, {"status": "ready", "log_position": 0})

    assert srv.call("POST", "/api/v1/telemetry", [reading("a", 0, 1.0), reading("a", 1, 2.0)])[0] == 202
    assert srv.call("GET", "/readyz") == (200, {"status": "ready", "log_position": 2})


def test_prometheus_metrics_count_what_happened(start: Callable[..., ServerProcess]) -> None:
    srv = start()
    first = [
        reading("a", 0, 1.0),
        {
            "device_id": "b",
            "type": "heartbeat",
            "ts": "2023-03-28T20:00:01Z",
            "event": {"cpu_usage": 1, "mem_usage": 2},
        },
        {"device_id": "b", "type": "startup", "ts": "2023-03-28T20:00:02Z"},
        reading("c", 3, "not a number"),
    ]
    assert srv.call("POST", "/api/v1/telemetry", first)[0] == 202
    assert srv.call("POST", "/api/v1/telemetry", [reading("a", 0, 1.0)])[0] == 202  # a re-send

    status, content_type, text = _get(srv, "/metrics")

    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    expected = {
        "readings_total": ("counter", 3),
        "messages_total": ("counter", 3),
        "devices": ("gauge", 2),
        "duplicates_total": ("counter", 1),
        "rejected_total": ("counter", 1),
        "requests_total": ("counter", 2),
        "log_position": ("gauge", 4),  # 3 readings and 1 reading-less event
        "queue_pending": ("gauge", 0),
        "live_subscribers": ("gauge", 0),
        "live_dropped_total": ("counter", 0),
    }
    lines = text.splitlines()
    for name, (kind, value) in expected.items():
        full = f"fleetstream_{name}"
        sample = lines.index(f"{full} {value}")
        assert lines[sample - 1] == f"# TYPE {full} {kind}"
        assert lines[sample - 2].startswith(f"# HELP {full} ")
    assert "# TYPE fleetstream_rate_per_s gauge" in lines
    assert text.endswith("\n")


def test_readings_total_counts_every_stored_reading(start: Callable[..., ServerProcess]) -> None:
    srv = start()
    for n in range(5):
        batch = [reading(f"dev-{n}", i, float(i)) for i in range(n * 10, n * 10 + 37)]
        assert srv.call("POST", "/api/v1/telemetry", batch)[0] == 202

    assert prometheus(srv)["fleetstream_readings_total"] == 5 * 37
    status, body = srv.call("GET", "/api/v1/stats/live")
    assert (status, body["ingest"]["readings_total"], body["ingest"]["devices"]) == (200, 185, 5)


def test_openapi_lists_every_endpoint(shared_server: ServerProcess) -> None:
    status, spec = shared_server.call("GET", "/openapi.json")

    assert status == 200
    assert (spec["info"]["title"], spec["info"]["version"]) == ("fleetstream", fleetstream.__version__)
    listed = {path: set(ops) for path, ops in spec["paths"].items()}
    missing = {p: m for p, m in ENDPOINTS.items() if not m <= listed.get(p, set())}
    assert missing == {}
    ingest = spec["paths"]["/api/v1/telemetry"]["post"]
    assert set(ingest["requestBody"]["content"]) == {"application/json", "application/x-ndjson"}
    assert {"202", "400", "413", "415", "422"} <= set(ingest["responses"])


def test_docs_page_serves_swagger_ui(shared_server: ServerProcess) -> None:
    status, content_type, html = _get(shared_server, "/docs")

    assert status == 200
    assert content_type.startswith("text/html")
    assert "swagger-ui" in html
    assert "/openapi.json" in html


def test_index_links_the_docs(shared_server: ServerProcess) -> None:
    status, content_type, html = _get(shared_server, "/")

    assert (status, content_type.split(";")[0]) == (200, "text/html")
    assert 'href="/docs"' in html


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/no/such/thing", 404, {"code": "not_found", "message": "Not Found", "details": None}),
        (
            "GET",
            "/api/v1/telemetry",
            405,
            {"code": "method_not_allowed", "message": "Method Not Allowed", "details": None},
        ),
    ],
)
def test_unknown_routes_use_the_error_body(
    shared_server: ServerProcess, method: str, path: str, status: int, body: dict[str, Any]
) -> None:
    assert shared_server.call(method, path) == (status, {"error": body})
