"""Operations: ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus text format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from fleetstream.api.deps import RuntimeDep
from fleetstream.api.prometheus import exposition
from fleetstream.api.routes.query import ingest_counters

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """Always `{"status": "ok"}` while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: store open and engine consuming; state of the sources")
async def readyz(runtime: RuntimeDep) -> Response:
    """200 when ingest can be acknowledged, else 503 with the reason. With device-side sources
    (`--mqtt`), `sources` shows each one's connection and counters; a source that is disconnected
    (and reconnecting) does not make the process unready, as HTTP ingest still works."""
    task = runtime.engine._task
    if not runtime.started or task is None or task.done():
        return JSONResponse({"status": "unavailable", "reason": "engine not running"}, 503)
    body: dict[str, Any] = {"status": "ready", "log_position": runtime.engine.position}
    if runtime.sources:
        body["sources"] = {name: source.status() for name, source in runtime.sources.items()}
    return JSONResponse(body)


_HELP = {
    "readings_total": ("counter", "Readings made durable (after dedup)."),
    "messages_total": ("counter", "Device messages made durable (after dedup)."),
    "duplicates_total": ("counter", "Re-sent readings dropped by dedup."),
    "rejected_total": ("counter", "Items rejected by validation."),
    "requests_total": ("counter", "Ingest requests received."),
    "rate_per_s": ("gauge", "Readings per second acknowledged, over the last seconds."),
    "devices": ("gauge", "Devices that have sent readings since start."),
    "late_total": ("counter", "Readings later than the allowed lateness (stored, kept out of windows)."),
    "replayed_total": ("counter", "Log records replayed into the processors at start (after a crash)."),
    "log_position": (
        "gauge",
        "Position in the durable log of the last stored record (a reading, or an event without one).",
    ),
}


@router.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(runtime: RuntimeDep) -> PlainTextResponse:
    """Counters and gauges of ingest, dedup, the queue and live subscribers."""
    values = ingest_counters(runtime)
    values["queue_pending"] = getattr(runtime.bus, "pending", lambda _t: 0)("readings")
    values["live_subscribers"] = len(runtime.hub)
    values["live_dropped_total"] = runtime.hub.dropped_total
    values["out_of_range_total"] = runtime.gateway.out_of_range_total
    help_ = {
        **_HELP,
        "queue_pending": ("gauge", "Readings accepted and waiting to be made durable."),
        "live_subscribers": ("gauge", "Open live streams."),
        "live_dropped_total": ("counter", "Live streams dropped for stalling."),
        "out_of_range_total": ("counter", "Readings accepted outside their device type's range (flag mode)."),
    }
    late_lines = [
        f'fleetstream_late_readings_total{{sensor="{_label(sensor)}"}} {n}'
        for sensor, n in sorted(runtime.engine.processors.late_total.items())
    ]
    for samples in [*(s.metrics() for s in runtime.sources.values()), runtime.engine.rules.metrics()]:
        for name, (kind, text, value) in samples.items():
            help_[name] = (kind, text)
            values[name] = value
    lines = exposition(values, help_)
    lines += [
        "# HELP fleetstream_late_readings_total Late readings per sensor.",
        "# TYPE fleetstream_late_readings_total counter",
        *late_lines,
    ]
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
