"""The device simulator, driven by a manual clock: fleet, schedule, values, batching, transports."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import statistics
from collections import Counter, defaultdict
from typing import Any

import msgspec
import pytest

from fleetstream.domain.clock import ManualClock
from fleetstream.domain.timeutil import parse_time
from fleetstream.errors import ConfigError, InvalidInput, InvalidReading, Overloaded
from fleetstream.ingest.decode import decode_body
from fleetstream.ingest.formats import DecodeContext
from fleetstream.simulator import (
    KINDS,
    TYPED_KINDS,
    Fleet,
    HttpTransport,
    InProcessTransport,
    Simulator,
    deal_kinds,
    transport_for,
)
from fleetstream.simulator.cli import simulate
from fleetstream.simulator.schedule import Lane
from fleetstream.testing import Harness

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
TYPED_ONLY = dict.fromkeys(TYPED_KINDS, 1.0)
Message = dict[str, Any]


class ListTransport:
    """Collects batches; raises the queued errors first, one per send."""

    def __init__(self, failures: list[Exception] | None = None) -> None:
        self.batches: list[list[Message]] = []
        self.failures = list(failures or [])
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def send(self, batch: list[Message]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.batches.append(batch)

    async def close(self) -> None:
        self.closed = True

    @property
    def messages(self) -> list[Message]:
        return [m for b in self.batches for m in b]


def drive(fleet: Fleet, clock: ManualClock, seconds: float, tick: float = 0.1) -> list[Message]:
    """Advance a fleet tick by tick for ``seconds`` of simulated time."""
    out: list[Message] = []
    start = clock.monotonic()
    for _ in range(round(seconds / tick)):
        clock.advance(tick)
        out.extend(fleet.advance(clock.monotonic() - start, clock.now_us()))
    return out


def test_seeded_fleet_is_deterministic() -> None:
    runs = [drive(Fleet(20, 1.0, seed, None), ManualClock(T0), 30) for seed in (42, 42, 43)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert len(runs[0]) == len(runs[2]) > 0


def test_devices_are_dealt_round_robin_with_numbered_ids() -> None:
    fleet = Fleet(11, seed=1)
    ids = [d.device_id for d in fleet.devices]
    assert ids[:6] == [
        "thermostat-0001",
        "barometer-0001",
        "hygrometer-0001",
        "heartrate-0001",
        "host-0001",
        "thermostat-0002",
    ]
    assert ids[-1] == "thermostat-0003"
    assert [k.key for k in deal_kinds(5, {"host": 1, "thermostat": 4})].count("host") == 1
    with pytest.raises(ConfigError, match="unknown device kind"):
        deal_kinds(3, {"toaster": 1})


def test_every_message_decodes_with_the_servers_decoder() -> None:
    clock, fleet = ManualClock(T0), Fleet(25, 1.0, 3)
    messages = [*fleet.advance(0.0, clock.now_us()), *drive(fleet, clock, 60)]
    body = msgspec.json.encode(messages)
    decoded = decode_body(body, "json", DecodeContext(clock.now_us(), 0), max_items=len(messages))
    assert decoded.rejected == []
    assert len(decoded.messages) == len(messages)
    assert {m.device_type for m in decoded.messages} == {k.device_type.name for k in KINDS.values()}
    assert {m.kind for m in decoded.messages} == {"telemetry", "startup", "heartbeat", "temperature"}
    for sent, got in zip(messages, decoded.messages, strict=True):
        assert got.device_id == sent["device_id"]
        assert got.msg_id == sent["msg_id"]
        values = sent.get("event", sent)
        assert all(values[r.sensor] == r.value for r in got.readings)


def test_timestamps_are_the_clock_at_generation_in_utc_with_milliseconds() -> None:
    clock = ManualClock(T0 + 123_456)
    fleet = Fleet(10, 1.0, 5)
    stamped: list[tuple[int, Message]] = []
    for _ in range(30):
        clock.advance(0.25)
        stamped.extend((clock.now_us(), m) for m in fleet.advance(clock.monotonic(), clock.now_us()))
    assert stamped
    for now_us, m in stamped:
        text = m.get("timestamp") or m["ts"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
        assert parse_time(text) == now_us // 1000 * 1000


@pytest.mark.parametrize("key", list(KINDS))
def test_random_walk_stays_in_range_and_moves_smoothly(key: str) -> None:
    rng = random.Random(9)
    for model in KINDS[key].sensors:
        walk = model.walk(1.0)
        home, value = model.initial(rng)
        values = []
        for _ in range(10_000):
            value = walk.step(value, home, rng)
            values.append(value)
        assert model.low <= min(values), model.name
        assert max(values) <= model.high, model.name
        width = model.high - model.low
        steps = [abs(b - a) for a, b in itertools.pairwise(values)]
        assert statistics.fmean(steps) < width / 20, model.name  # a walk, not uniform noise
        lag1 = statistics.correlation(values[:-1], values[1:])
        assert lag1 > 0.8, (model.name, lag1)
        assert model.low < statistics.fmean(values) < model.high


def test_random_walk_is_bounded_even_when_pushed_hard() -> None:
    model = KINDS["heartrate"].sensors[0]
    wild = type(model)("x", 0.0, 1.0, 0.95, 1.0, spread=5.0, reversion_s=1.0)
    rng = random.Random(1)
    for dt in (0.001, 1.0, 1000.0):
        walk, value = wild.walk(dt), 0.5
        for _ in range(10_000):
            value = walk.step(value, 0.99, rng)
            assert 0.0 <= value <= 1.0


def test_fleet_values_stay_in_each_sensors_range() -> None:
    ranges = {(k.key, s.name): (s.low, s.high) for k in KINDS.values() for s in k.sensors}
    for m in drive(Fleet(50, 1.0, 11), ManualClock(T0), 300, tick=1.0):
        key = m["device_id"].rsplit("-", 1)[0]
        values = m.get("event", m)
        for sensor in ("temperature", "pressure", "humidity", "heart_rate", "cpu_usage", "mem_usage"):
            if sensor in values:
                low, high = ranges[key, sensor]
                assert low <= values[sensor] <= high, m
        if "heart_rate" in m:
            assert isinstance(m["heart_rate"], int)


def test_host_monitors_send_startup_once_heartbeat_every_15s_temperature_every_3s() -> None:
    clock = ManualClock(T0)
    fleet = Fleet(4, 1.0, 6, kinds={"host": 1})
    messages = [*fleet.advance(0.0, clock.now_us()), *drive(fleet, clock, 60)]
    by_host: dict[str, list[Message]] = defaultdict(list)
    for m in messages:
        by_host[m["device_id"]].append(m)
    assert sorted(by_host) == ["host-0001", "host-0002", "host-0003", "host-0004"]
    for sent in by_host.values():
        assert Counter(m["type"] for m in sent) == {"startup": 1, "heartbeat": 4, "temperature": 20}
        assert sent[0]["type"] == "startup"
        assert sent[0]["event"] == {}
        assert [int(m["msg_id"].rsplit("-", 1)[1]) for m in sent] == list(range(len(sent)))
        beats = [parse_time(m["ts"]) for m in sent if m["type"] == "heartbeat"]
        gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(beats)]
        assert all(14.85 <= g <= 15.15 for g in gaps), gaps
        assert all(set(m["event"]) == {"cpu_usage", "mem_usage"} for m in sent if m["type"] == "heartbeat")


def test_lane_hands_out_the_same_occurrences_whatever_the_tick() -> None:
    members = [(i * 0.37 % 2.0, i) for i in range(10)]

    def occurrences(tick: float) -> list[int]:
        lane, got, t = Lane(2.0, members), [], 0.0
        while t < 7.0:
            t = min(7.0, t + tick)
            got.extend(lane.due(t))
        return got

    expected = occurrences(0.01)
    assert len(expected) == 10 * 3 + sum(1 for phase, _ in members if phase < 1.0)
    for tick in (0.1, 0.37, 1.0, 7.0):
        assert occurrences(tick) == expected
    lane = Lane(2.0, members)
    skipped = lane.skip(5.0)
    assert skipped + len(lane.due(7.0)) == len(expected)


def run_ticks(sim: Simulator, clock: ManualClock, seconds: float, tick: float = 0.1) -> None:
    async def scenario() -> None:
        await sim.tick()
        for _ in range(round(seconds / tick)):
            clock.advance(tick)
            await sim.tick()
            await asyncio.sleep(0)  # let the batches of this tick be sent
        await sim.flush()

    asyncio.run(scenario())


def test_thousand_devices_at_rate_1_for_10_seconds_send_10000_messages_in_batches() -> None:
    clock, transport = ManualClock(T0), ListTransport()
    sim = Simulator(1000, 1.0, 7, clock, transport, kinds=TYPED_ONLY)
    run_ticks(sim, clock, 10.0)
    assert len(transport.messages) == 10_000
    assert (sim.generated, sim.sent, sim.acknowledged) == (10_000, 10_000, 10_000)
    assert (sim.errors, sim.dropped) == (0, 0)
    assert all(1 <= len(b) <= 500 for b in transport.batches)
    per_device: dict[str, list[int]] = defaultdict(list)
    for m in transport.messages:
        per_device[m["device_id"]].append(int(m["msg_id"].rsplit("-", 1)[1]))
    assert len(per_device) == 1000
    assert all(seqs == list(range(10)) for seqs in per_device.values())
    assert 900 <= sim.rate <= 1100


def test_rate_is_acknowledged_messages_per_second_from_the_first_seconds() -> None:
    clock, transport = ManualClock(T0), ListTransport()
    sim = Simulator(100, 1.0, 7, clock, transport, kinds=TYPED_ONLY)
    assert sim.rate == 0.0
    run_ticks(sim, clock, 2.5)
    assert 85 <= sim.rate <= 105


def test_batches_hold_at_most_batch_size_messages() -> None:
    clock, transport = ManualClock(T0), ListTransport()
    sim = Simulator(2300, 1.0, 7, clock, transport, kinds=TYPED_ONLY, batch_size=500)
    run_ticks(sim, clock, 1.0, tick=1.0)
    assert [len(b) for b in transport.batches] == [500, 500, 500, 500, 300]


def test_transport_errors_are_counted_and_backed_off_never_raised() -> None:
    clock = ManualClock(T0)
    transport = ListTransport([Overloaded("busy", retry_after=1), RuntimeError("driver bug")])
    failed = 0
    sim = Simulator(10, 1.0, 1, clock, transport, kinds=TYPED_ONLY)

    async def scenario() -> None:
        nonlocal failed
        clock.advance(1.0)
        await sim.tick()  # origin: nothing due yet
        clock.advance(1.0)
        await sim.tick()
        await asyncio.sleep(0)
        assert (sim.sent, sim.errors) == (10, 10)
        clock.advance(0.1)
        await sim.tick()  # backing off: queued, not sent
        assert sim.sent == 10
        clock.advance(1.0)
        await sim.tick()  # second failure (what was queued meanwhile too), longer backoff
        await asyncio.sleep(0)
        assert sim.errors == sim.sent > 10
        failed = sim.errors
        clock.advance(1.1)
        await sim.tick()
        await sim.flush()

    asyncio.run(scenario())
    assert sim.errors == failed
    assert sim.acknowledged == sim.sent - sim.errors == len(transport.messages) > 0
    assert sim.generated == sim.sent
    assert sim.dropped == 0


def test_a_stall_skips_missed_messages_and_a_slow_target_drops_the_oldest() -> None:
    clock, transport = ManualClock(T0), ListTransport()
    sim = Simulator(10, 1.0, 1, clock, transport, kinds=TYPED_ONLY, max_lag_s=5.0)
    run_ticks(sim, clock, 0.0)
    clock.advance(60.0)
    run_ticks(sim, clock, 0.0)
    assert (sim.generated, sim.dropped) == (50, 550)

    class Stuck(ListTransport):
        async def send(self, batch: list[Message]) -> None:
            await asyncio.Event().wait()

    clock, stuck = ManualClock(T0), Stuck()
    limits = {"batch_size": 10, "max_in_flight": 1, "max_pending": 50}
    sim = Simulator(100, 1.0, 1, clock, stuck, kinds=TYPED_ONLY, **limits)

    async def scenario() -> None:
        await sim.tick()
        clock.advance(2.0)
        await sim.tick()
        assert (sim.sent, sim.pending, sim.dropped) == (10, 40, 150)
        await sim.stop(flush_timeout_s=0.05)

    asyncio.run(scenario())
    assert (sim.errors, sim.dropped, sim.acknowledged, sim.pending) == (10, 190, 0, 0)
    assert stuck.closed


def test_run_starts_and_stops_the_transport_and_flushes() -> None:
    clock, transport = ManualClock(T0), ListTransport()
    sim = Simulator(6, 1.0, 1, clock, transport, kinds={"host": 1})
    asyncio.run(sim.run(0.05))
    assert transport.started
    assert transport.closed
    assert not sim.running
    assert [m["type"] for m in transport.messages] == ["startup"] * 6
    assert sim.acknowledged == 6


def test_in_process_transport_feeds_the_gateway_and_resends_are_stored_once() -> None:
    async def scenario() -> tuple[Harness, Simulator]:
        async with Harness() as h:
            transport = InProcessTransport(h.runtime.gateway.submit)
            sim = Simulator(25, 1.0, 2, h.clock, transport)
            start = h.clock.now_us()
            await sim.tick()
            for _ in range(30):
                h.clock.advance(0.5)
                await sim.tick()
            await sim.stop()
            again = Fleet(25, 1.0, 2).advance(0.0, start)  # the same startups (same boot), re-sent
            await transport.send(again)
        return h, sim

    h, sim = asyncio.run(scenario())
    assert sim.errors == 0
    assert sim.acknowledged == sim.generated > 0
    assert len(h.store.messages) == sim.acknowledged
    assert h.runtime.engine.dedup.duplicates_total == 5


def test_in_process_transport_retries_overload_and_raises_rejections() -> None:
    calls: list[tuple[bytes, str]] = []
    answers: list[Exception | None] = [Overloaded("full", retry_after=0.0), None, InvalidReading("bad")]

    async def submit(body: bytes, content_type: str) -> None:
        calls.append((body, content_type))
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    async def scenario() -> None:
        transport = InProcessTransport(submit)
        await transport.send([{"device_id": "a", "seq": 0}])
        with pytest.raises(InvalidInput):
            await transport.send([{"device_id": "a", "seq": 1}])

    asyncio.run(scenario())
    assert [msgspec.json.decode(body) for body, _ in calls] == [
        [{"device_id": "a", "seq": 0}],
        [{"device_id": "a", "seq": 0}],
        [{"device_id": "a", "seq": 1}],
    ]
    assert {ct for _, ct in calls} == {"application/json"}


def test_the_target_url_chooses_the_transport() -> None:
    http = transport_for("http://127.0.0.1:8000")
    assert isinstance(http, HttpTransport)
    assert http.url == "http://127.0.0.1:8000/api/v1/telemetry"
    proxied = transport_for("https://example.org/fleet/")
    assert isinstance(proxied, HttpTransport)
    assert proxied.url == "https://example.org/fleet/api/v1/telemetry"
    for later in ("mqtt://127.0.0.1:1883/telemetry", "kafka://127.0.0.1:9092"):
        with pytest.raises(ConfigError, match="later version"):
            transport_for(later)
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        transport_for("127.0.0.1:8000")


def test_simulate_refuses_a_target_of_a_later_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(10, 1.0, "kafka://127.0.0.1:9092", 1.0, None, 500) == 2
    assert "later version" in capsys.readouterr().err
    assert simulate(10, 1.0, "http://127.0.0.1:1", 1.0, None, 0) == 2
    assert "--batch" in capsys.readouterr().err
