"""The load process of ``ingest.py``: HTTP/1.1 keep-alive POSTs of JSON batches over raw asyncio.

Run by ``ingest.py`` as its own process (so it has its own core and GIL)::

    python benchmarks/_loadgen.py --port P --seconds 20 --warmup 3 --concurrency 64 --batch 100

It prints ``WINDOW_START`` and ``WINDOW_END`` when the measured window opens and closes (the
driver samples the server's CPU time then), and one last line ``RESULT {json}``.

Bodies. A pool of batch templates is encoded once at start: ``--devices`` devices (thermostats,
barometers, hygrometers, heart-rate meters as typed messages; host monitors as canonical
readings), each request ``--batch`` messages of one reading. Every reading must be unique (the
server drops re-sent readings), so each template leaves the first 23 characters of its
timestamps (``YYYY-MM-DDTHH:MM:SS.mmm``) open and every round through the pool fills them with
the current wall-clock millisecond, strictly increasing per round; the microsecond digits and
the device differ between the readings of one round. Building a request is then one
``bytes.join`` (~2 µs), so event time follows the wall clock as it does for real devices.

The client. One connection per concurrent sender, a request in flight per connection (closed
loop), responses parsed by hand from ``Content-Length``. On uvloop it drives ~20k requests/s of
10 kB bodies from one core, several times what either server under test answers, and its
own CPU use is reported so that this can be checked on every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

PREFIX_LEN = len("2025-01-01T00:00:00.000")
MARK = b"\x00"


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of simulated device: its id prefix and how one of its readings is written."""

    prefix: str
    tag: str | None  # typed message tag; None for canonical readings
    sensors: tuple[tuple[str, float, float], ...]  # (sensor, low, high)


KINDS = (
    Kind("th", "Thermostat", (("temperature", 15.0, 30.0),)),
    Kind("baro", "Barometer", (("pressure", 950.0, 1050.0),)),
    Kind("hygro", "Hygrometer", (("humidity", 20.0, 80.0),)),
    Kind("hrm", "Heart Rate Meter", (("heart_rate", 50.0, 130.0),)),
    Kind("host", None, (("cpu_usage", 0.0, 100.0), ("mem_usage", 0.0, 100.0), ("temperature", 30.0, 90.0))),
)


def _reading(device: int, occurrence: int, occurrences: int, rnd: random.Random) -> bytes:
    """One message as JSON with the 23-character timestamp prefix left as ``MARK``."""
    kind = KINDS[device % len(KINDS)]
    device_id = f"{kind.prefix}-{device:05d}"
    micros = occurrence * (1000 // occurrences)
    ts = f"{MARK.decode()}{micros:03d}Z"
    sensor, low, high = kind.sensors[occurrence % len(kind.sensors)]
    value = round(rnd.uniform(low, high), 2)
    if kind.tag is not None:
        text = f'{{"device_id":"{device_id}","timestamp":"{ts}","{sensor}":{value},"tag":"{kind.tag}"}}'
    else:
        text = f'{{"device_id":"{device_id}","timestamp":"{ts}","sensor":"{sensor}","value":{value}}}'
    return text.encode()


def body_templates(
    devices: int, batch: int, bodies: int, seed: int = 1, *, by_format: bool = False
) -> list[bytes]:
    """``bodies`` JSON arrays of ``batch`` messages with ``MARK`` where the timestamp prefix goes.

    Within the pool every (device, microsecond digits) pair is distinct, so one round through
    the pool with one timestamp prefix sends every reading once. Batches mix devices of every
    kind, so typed and canonical messages share a batch (an edge gateway forwarding a mixed
    fleet); with ``by_format`` each batch holds only typed or only canonical messages.
    """
    total = batch * bodies
    occurrences = -(-total // devices)
    if occurrences > 1000:
        raise ValueError("pool too large: at most 1000 readings per device per round")
    rnd = random.Random(seed)
    readings = [(j % devices, j // devices) for j in range(total)]
    rnd.shuffle(readings)
    if by_format:  # canonical (host) devices first; stable, so devices stay mixed within a format
        readings.sort(key=lambda r: KINDS[r[0] % len(KINDS)].tag is not None)
    messages = [_reading(device, occurrence, occurrences, rnd) for device, occurrence in readings]
    return [b"[" + b",".join(messages[i * batch : (i + 1) * batch]) + b"]" for i in range(bodies)]


def fill(template: bytes, prefix: bytes) -> bytes:
    """A template with its timestamps filled (what the server receives)."""
    return template.replace(MARK, prefix)


def ts_prefix(ms: int) -> bytes:
    """``YYYY-MM-DDTHH:MM:SS.mmm`` of epoch milliseconds."""
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}".encode()


class Requests:
    """Hands out ready request bytes: round-robin over the pool, a new timestamp each round."""

    def __init__(self, host: str, port: int, path: str, templates: list[bytes], batch: int) -> None:
        self.batch = batch
        self.parts: list[list[bytes]] = []
        for template in templates:
            length = len(template) + template.count(MARK) * (PREFIX_LEN - len(MARK))
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()
            self.parts.append((head + template).split(MARK))
        self.next_index = 0
        self.last_ms = 0
        self.prefix = b""
        self.rounds = 0

    def next(self) -> bytes:
        i = self.next_index
        if i == 0:
            self.last_ms = max(time.time_ns() // 1_000_000, self.last_ms + 1)
            self.prefix = ts_prefix(self.last_ms)
            self.rounds += 1
        self.next_index = (i + 1) % len(self.parts)
        return self.prefix.join(self.parts[i])


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0:
            self._fail(ConnectionError("response without Content-Length"))
            return
        stop = head.find(b"\r\n", at)
        length = int(head[at + 15 : stop if stop >= 0 else None])
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4 : total])
        del self.buffer[:total]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionError("connection closed by the server"))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


@dataclass
class Stats:
    """What the load process saw."""

    window_requests: int = 0
    window_readings: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    per_second: list[int] = field(default_factory=list)  # readings acknowledged in each second of the window
    acked_readings: int = 0  # over the whole run, warm-up and tail included
    acked_requests: int = 0
    rejected_items: int = 0
    sent_requests: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def _sender(
    host: str, port: int, gen: Requests, stats: Stats, window: tuple[float, float], expected: bytes
) -> None:
    loop = asyncio.get_running_loop()
    start, end = window
    conn: Connection | None = None
    while time.perf_counter() < end:
        if conn is None or conn.closed:
            try:
                _, conn = await loop.create_connection(Connection, host, port)
            except OSError:
                stats.error("connect")
                await asyncio.sleep(0.1)
                continue
        data = gen.next()
        stats.sent_requests += 1
        t0 = time.perf_counter_ns()
        try:
            status, body = await asyncio.wait_for(conn.request(data), 60.0)
        except (OSError, TimeoutError) as exc:
            stats.error(type(exc).__name__)
            if conn.transport is not None:
                conn.transport.close()
            conn = None
            continue
        t1 = time.perf_counter_ns()
        in_window = start <= t1 / 1e9 <= end
        if status == 202:
            accepted = gen.batch
            if body != expected:
                doc: dict[str, Any] = json.loads(body)
                accepted = int(doc.get("accepted", 0))
                stats.rejected_items += len(doc.get("rejected", ()))
            stats.acked_requests += 1
            stats.acked_readings += accepted
            if in_window:
                second = int(t1 / 1e9 - start)
                while len(stats.per_second) <= second:
                    stats.per_second.append(0)
                stats.per_second[second] += accepted
                stats.window_requests += 1
                stats.window_readings += accepted
                stats.latencies_ns.append(t1 - t0)
        else:
            stats.error(str(status))
            await asyncio.sleep(0.05)  # 503 means "retry later": do not spin on it
    if conn is not None and conn.transport is not None:
        conn.transport.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    templates = body_templates(args.devices, args.batch, args.pool, args.seed, by_format=args.by_format)
    gen = Requests(args.host, args.port, args.path, templates, args.batch)
    expected = b'{"accepted":%d,"rejected":[]}' % args.batch
    stats = Stats()
    now = time.perf_counter()
    start, end = now + args.warmup, now + args.warmup + args.seconds
    senders = [
        asyncio.create_task(_sender(args.host, args.port, gen, stats, (start, end), expected))
        for _ in range(args.concurrency)
    ]
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    print("WINDOW_START", flush=True)
    cpu0, wall0, req0 = time.process_time(), time.perf_counter(), stats.sent_requests
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    cpu1, wall1, req1 = time.process_time(), time.perf_counter(), stats.sent_requests
    print("WINDOW_END", flush=True)
    # Requests in flight at the end still complete (they count as acknowledged, not in the window).
    await asyncio.wait(senders, timeout=args.drain_timeout)
    for task in senders:
        task.cancel()
    lat = sorted(stats.latencies_ns)
    window_s = wall1 - wall0

    def pct(q: float) -> float:
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, max(0, round(q / 100 * len(lat) + 0.5) - 1))] / 1e6

    return {
        "window_s": window_s,
        "requests": stats.window_requests,
        "readings": stats.window_readings,
        "requests_per_s": stats.window_requests / window_s,
        "readings_per_s": stats.window_readings / window_s,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": lat[-1] / 1e6 if lat else float("nan"),
        "errors": stats.errors,
        "rejected_items": stats.rejected_items,
        "acked_readings": stats.acked_readings,
        "acked_requests": stats.acked_requests,
        "loadgen_cpu_pct": 100 * (cpu1 - cpu0) / window_s,
        "loadgen_cpu_us_per_request": 1e6 * (cpu1 - cpu0) / max(1, req1 - req0),
        "per_second": stats.per_second[: int(window_s)],
        "rounds": gen.rounds,
        "body_bytes": sum(len(t) for t in templates) // len(templates),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/api/v1/telemetry")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window")
    p.add_argument("--warmup", type=float, default=3.0, help="load before the window opens")
    p.add_argument("--concurrency", type=int, default=64, help="connections, one request in flight each")
    p.add_argument("--batch", type=int, default=100, help="messages per request")
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--pool", type=int, default=100, help="request bodies per round")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--by-format", action="store_true", help="batches of only typed or only canonical messages"
    )
    p.add_argument("--drain-timeout", type=float, default=35.0, help="wait for in-flight requests at the end")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(run(args))
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
