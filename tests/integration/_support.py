"""Helpers of the integration suite: times, queries, the DuckDB file, Server-Sent Events."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import duckdb


class ServerProcess(Protocol):
    """What the tests use of ``tests/conftest.py``'s ``ServerProcess`` (that module has no
    importable name here)."""

    port: int
    data: Path

    @property
    def url(self) -> str: ...

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 10,
    ) -> tuple[int, Any]: ...

    def stop(self, sig: str = "term") -> int: ...

    def output(self) -> str: ...


T0 = datetime(2023, 3, 28, 20, 0, 0, tzinfo=UTC)
"""Event time of most test readings: a fixed past instant, so queries have exact bounds."""

DEVICE_ID_RULE = "1 to 128 characters of A-Z a-z 0-9 _ . : @ ! -"
UNITS = {"temperature": "°C", "pressure": "hPa", "humidity": "%", "heart_rate": "bpm"}


def iso(dt: datetime) -> str:
    """RFC 3339 with ``Z``, microseconds shown only when not zero (the server's own form)."""
    text = dt.astimezone(UTC).replace(tzinfo=None, microsecond=0).isoformat()
    if dt.microsecond:
        text += f".{dt.microsecond:06d}"
    return text + "Z"


def at(seconds: float, base: datetime = T0) -> str:
    """``base + seconds`` as RFC 3339 text."""
    return iso(base + timedelta(seconds=seconds))


def reading(
    device: str, seconds: float, value: Any, sensor: str = "temperature", **extra: Any
) -> dict[str, Any]:
    """A canonical reading at ``T0 + seconds``."""
    return {"device_id": device, "timestamp": at(seconds), "sensor": sensor, "value": value, **extra}


def query(path: str, **params: Any) -> str:
    """``path?params`` (lists repeat the key; ``from_`` means ``from``)."""
    pairs: list[tuple[str, Any]] = []
    for key, value in params.items():
        name = "from" if key == "from_" else key
        for item in value if isinstance(value, list | tuple) else [value]:
            pairs.append((name, item))
    return f"{path}?{urlencode(pairs)}" if pairs else path


def metrics(
    srv: ServerProcess,
    device: str | list[str],
    *,
    agg: str = "count,min,max,avg",
    start: datetime = T0 - timedelta(days=1),
    end: datetime = T0 + timedelta(days=1),
    **params: Any,
) -> dict[str, Any]:
    """``GET /api/v1/metrics`` of some devices over ``[start, end)``; the ``metrics`` object."""
    status, body = srv.call(
        "GET", query("/api/v1/metrics", device_id=device, agg=agg, from_=iso(start), to=iso(end), **params)
    )
    assert status == 200, body
    result: dict[str, Any] = body["metrics"]
    return result


def path_segment(text: str) -> str:
    """``text`` percent-encoded for a URL path (``a b`` → ``a%20b``)."""
    return quote(text, safe="")


def db_path(srv: ServerProcess) -> Path:
    """The DuckDB file of a server started with ``--data``."""
    return Path(srv.data) / "fleetstream.duckdb"


def read_db(path: Path, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a query on a DuckDB file no process holds (stop the server first)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy (returned) or ``timeout`` passes (fails)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    msg = f"condition not met within {timeout} s; last result {last!r}"
    raise AssertionError(msg)


def sse_frames(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events frames of a byte stream: ``{"event", "data", "comments", "retry"}``.

    ``data`` is the decoded JSON of the frame's data lines (``None`` when there are none).
    """
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            frame: dict[str, Any] = {"event": None, "data": None, "comments": [], "retry": None}
            data_lines: list[str] = []
            for line in raw.decode().split("\n"):
                if line.startswith(":"):
                    frame["comments"].append(line[1:].strip())
                elif line.startswith("event:"):
                    frame["event"] = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data_lines.append(line.removeprefix("data:").strip())
                elif line.startswith("retry:"):
                    frame["retry"] = int(line.removeprefix("retry:").strip())
            if data_lines:
                frame["data"] = json.loads("\n".join(data_lines))
            yield frame


def ndjson_lines(chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """JSON objects of an NDJSON byte stream, one per complete line."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield json.loads(line)


def stop_cleanly(srv: ServerProcess) -> None:
    """SIGTERM, then check the server said it stored everything and closed the store.

    The exit status is 0 or death by the re-raised SIGTERM (uvicorn re-raises the signal it caught
    once shutdown is done, as a service manager expects); what matters is the last log line.
    """
    code = srv.stop("term")
    assert code == 0, srv.output()
    assert "stopped cleanly at log position" in srv.output()


def prometheus(srv: ServerProcess) -> dict[str, float]:
    """The samples of ``GET /metrics`` (Prometheus text format), by metric name."""
    status, text = srv.call("GET", "/metrics")
    assert status == 200, text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples
