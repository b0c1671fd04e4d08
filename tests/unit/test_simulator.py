"""The device simulator, driven by a manual clock: fleet, schedule, values, batching, transports."""

from __future__ import annotations

import asyncio
import csv
import doctest
import itertools
import json
import random
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fleetstream.config import Settings
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
from fleetstream.simulator import delivery as delivery_module
from fleetstream.simulator import fleet as fleet_module
from fleetstream.simulator import fleet_kinds as fleet_kinds_module
from fleetstream.simulator import schedule as schedule_module
from fleetstream.simulator import truth as truth_module
from fleetstream.simulator.cli import simulate
from fleetstream.simulator.delivery import LATE, ORIGINAL, Delivery, DeliveryOptions, parse_duration
from fleetstream.simulator.embedded import add_simulator
from fleetstream.simulator.models import iso_ms
from fleetstream.simulator.schedule import Lane
from fleetstream.simulator.truth import GroundTruth, write_truth
from fleetstream.testing import Harness

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
TYPED_ONLY = dict.fromkeys(TYPED_KINDS, 1.0)
NO_TRACKERS = {**TYPED_ONLY, "host": 1.0}
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
    fleet = Fleet(13, seed=1)
    ids = [d.device_id for d in fleet.devices]
    assert ids[:7] == [
        "thermostat-0001",
        "barometer-0001",
        "hygrometer-0001",
        "heartrate-0001",
        "host-0001",
        "tracker-0001",
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
        if "sensor" in sent:  # a canonical reading: a tracker's, or a host's fan and voltage
            values = {sent["sensor"]: sent["value"]}
            assert got.device_type == sent["device_type"]
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
        assert Counter(m.get("type", m.get("sensor")) for m in sent) == {
            "startup": 1,
            "heartbeat": 4,
            "temperature": 20,
            "fan_rpm": 4,  # with each heartbeat: the fan and the supply voltage
            "voltage": 4,
        }
        assert sent[0]["type"] == "startup"
        assert sent[0]["event"] == {}
        assert [int(m["msg_id"].rsplit("-", 1)[1]) for m in sent] == list(range(len(sent)))
        beats = [parse_time(m["ts"]) for m in sent if m.get("type") == "heartbeat"]
        gaps = [(b - a) / 1e6 for a, b in itertools.pairwise(beats)]
        assert all(14.85 <= g <= 15.15 for g in gaps), gaps
        assert all(
            set(m["event"]) == {"cpu_usage", "mem_usage"} for m in sent if m.get("type") == "heartbeat"
        )


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


def test_a_tick_with_a_bounded_span_catches_up_over_the_next_ticks_then_skips_past_the_lag() -> None:
    clock, transport = ManualClock(T0), ListTransport()
    sim = Simulator(10, 1.0, 1, clock, transport, kinds=TYPED_ONLY, max_lag_s=5.0)

    async def scenario() -> list[tuple[int, float, int]]:
        seen = []
        assert await sim.tick(max_span_s=0.5) == 0  # at 0 s: every phase is after it
        clock.advance(3.0)  # a tick 3 s late: 0.5 s of the fleet's time per tick, 30 readings due
        for _ in range(7):
            due = await sim.tick(max_span_s=0.5)
            seen.append((due, round(sim.elapsed_s, 3), sim.dropped))
        clock.advance(10.0)  # now more than max_lag_s behind: skipped down to 5 s, then 0.5 s more
        due = await sim.tick(max_span_s=0.5)
        seen.append((due, round(sim.elapsed_s, 3), sim.dropped))
        await sim.stop()
        return seen

    seen = asyncio.run(scenario())
    # The same fleet, advanced half a second at a time by hand, is what the ticks must have sent.
    reference = Fleet(10, 1.0, 1, TYPED_ONLY)
    assert reference.advance(0.0, T0) == []
    steps = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    expected = [len(reference.advance(t, T0)) for t in steps]
    assert sum(expected) == 30  # each of the 10 devices once a second, for 3 s
    assert seen[:7] == [(n, t, 0) for n, t in zip(expected, steps, strict=True)]
    assert reference.skip(8.0) == 50
    assert seen[7] == (len(reference.advance(8.5, T0)), 8.5, 50)
    assert sim.generated == sum(n for n, _, _ in seen) == len(transport.messages)


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
    hosts = [d for d in sim.fleet.devices if d.kind.key == "host"]
    assert h.runtime.engine.dedup.duplicates_total == len(hosts) == 4  # 25 devices dealt over 6 kinds


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
    assert type(transport_for("mqtt://127.0.0.1:1883/fleet")).__name__ == "MqttTransport"
    assert type(transport_for("kafka://127.0.0.1:9092")).__name__ == "KafkaTransport"
    with pytest.raises(ConfigError, match="topic prefix"):
        transport_for("mqtt://127.0.0.1:1883/devices/+")
    with pytest.raises(ConfigError, match="expected http://HOST:PORT"):
        transport_for("127.0.0.1:8000")


def test_simulate_refuses_a_bad_target_or_batch(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate(10, 1.0, "kafka://127.0.0.1:9092/no topic", 1.0, None, 500) == 2
    assert "invalid Kafka URL" in capsys.readouterr().err
    assert simulate(10, 1.0, "http://127.0.0.1:1", 1.0, None, 0) == 2
    assert "--batch" in capsys.readouterr().err


# --- delivery knobs: jitter, duplicates, late messages, clock skew; the ground truth -----------------


class TimedTransport(ListTransport):
    """Also notes the clock's monotonic time of each batch it takes."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    async def send(self, batch: list[Message]) -> None:
        await super().send(batch)
        self.times.append(self.clock.monotonic())

    def sends(self) -> list[tuple[float, int, Message]]:
        """(time sent, batch number, message) of every message, in the order sent."""
        return [(t, i, m) for i, (t, b) in enumerate(zip(self.times, self.batches, strict=True)) for m in b]


def run_and_stop(sim: Simulator, clock: ManualClock, seconds: float, tick: float = 0.1) -> None:
    """Tick for ``seconds`` of simulated time, then stop (which releases or gives up held messages)."""

    async def scenario() -> None:
        await sim.tick()
        for _ in range(round(seconds / tick)):
            clock.advance(tick)
            await sim.tick()
            await asyncio.sleep(0)
        await sim.stop()

    asyncio.run(scenario())


def generated_at(m: Message) -> float:
    """Seconds after T0 of a message's event time (its generation time when its clock is right)."""
    return (parse_time(m.get("timestamp") or m["ts"]) - T0) / 1e6


def key(m: Message) -> tuple[str, str]:
    return m["device_id"], m["msg_id"]


def test_durations_read_milliseconds_seconds_minutes_or_plain_seconds() -> None:
    cases = {
        "500ms": 0.5,
        "2s": 2.0,
        "1m": 60.0,
        "1.5m": 90.0,
        "3": 3.0,
        "0.25": 0.25,
        "2S": 2.0,
        "0": 0.0,
        "1d": 86400.0,
    }
    assert {text: parse_duration(text) for text in cases} == cases
    assert parse_duration(7) == 7.0
    for bad in ("", "2 sec", "-1s", "1y", "s", "1e3"):
        with pytest.raises(ConfigError, match="--jitter: expected a duration"):
            parse_duration(bad, "--jitter")
    with pytest.raises(ConfigError, match="fraction"):
        DeliveryOptions(duplicates=1.5)


def test_duplicates_are_identical_copies_in_a_later_batch_at_the_chosen_rate() -> None:
    def run(tick: float) -> tuple[Simulator, TimedTransport]:
        clock = ManualClock(T0)
        transport = TimedTransport(clock)
        sim = Simulator(
            200, 1.0, 5, clock, transport, kinds=NO_TRACKERS, delivery=DeliveryOptions(duplicates=0.05)
        )
        run_and_stop(sim, clock, 30.0, tick)
        return sim, transport

    sim, transport = run(0.1)
    copies: dict[tuple[str, str], list[tuple[float, int, Message]]] = defaultdict(list)
    for sent in transport.sends():
        copies[key(sent[2])].append(sent)
    twice = {k: v for k, v in copies.items() if len(v) == 2}
    n = len(copies)
    # typed at 1/s; hosts: startup, temperature every 3 s, heartbeat with fan and voltage every 15 s
    assert n == sim.generated == 160 * 30 + 40 * (1 + 10 + 2 * 3)
    assert all(len(v) <= 2 for v in copies.values())
    assert sim.duplicates_sent == len(twice) == sim.sent - n == sim.acknowledged - n
    assert 0.04 * n <= len(twice) <= 0.06 * n
    gaps = []
    for (t1, batch1, m1), (t2, batch2, m2) in twice.values():
        assert m2 == m1  # the same payload, msg_id included
        assert batch2 > batch1
        if t2 < 30.0 - 1e-6:  # not released early by the stop
            gaps.append(t2 - t1)
    assert all(0.1 - 1e-9 <= g < 1.1 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(0.6, abs=0.06)  # 0.1..1 s, then the next 0.1 s tick

    # The picks follow the seed, the device and the sequence number, not how the ticks fall (with
    # 0.25 s ticks, the messages of the fleet's lanes interleave differently).
    _, other = run(0.25)
    assert [m["device_id"] for m in other.messages] != [m["device_id"] for m in transport.messages]
    counted = Counter(key(m) for m in other.messages)
    early = {k for k, v in copies.items() if generated_at(v[0][2]) < 29.0}
    assert {k for k in early if counted[k] == 2} == {k for k in early if k in twice}


def test_late_messages_are_held_for_the_late_delay_and_the_last_ones_are_never_sent() -> None:
    def run(options: DeliveryOptions | None) -> tuple[Simulator, TimedTransport]:
        clock = ManualClock(T0)
        transport = TimedTransport(clock)
        sim = Simulator(100, 1.0, 3, clock, transport, kinds=TYPED_ONLY, delivery=options)
        run_and_stop(sim, clock, 60.0)
        return sim, transport

    sim, transport = run(DeliveryOptions(late=0.02, late_delay_s=40.0))
    delays = [(t - generated_at(m), m) for t, _, m in transport.sends()]
    late = [m for d, m in delays if d > 1e-6]
    assert all(d < 1e-6 or 40.0 - 1e-6 <= d < 40.1 for d, _ in delays)  # at once, or after the delay
    assert len(late) == sim.late_sent
    assert 20 <= sim.late_sent <= 60  # ~2% of the 2,000 messages generated in the first 20 s
    # A late message arrives after messages with later event times: the server sees it out of order.
    arrival = [generated_at(m) for _, _, m in transport.sends()]
    assert any(a > b + 30 for a, b in itertools.pairwise(arrival))

    _, plain = run(None)
    unsent = {key(m) for m in plain.messages} - {key(m) for m in transport.messages}
    assert len(transport.messages) == len({key(m) for m in transport.messages})  # nothing twice
    assert len(unsent) == sim.late_unsent == sim.generated - sim.sent
    assert all(generated_at(m) > 20.0 for m in plain.messages if key(m) in unsent)  # held at the end
    assert 0.01 * 6000 <= sim.late_sent + sim.late_unsent <= 0.03 * 6000


def test_late_messages_are_held_in_the_order_generated_and_counted_while_held() -> None:
    held = Delivery(DeliveryOptions(late=0.5, late_delay_s=10.0), seed=3)
    messages = [{"device_id": f"d-{i % 7}", "msg_id": f"boot-{i}"} for i in range(200)]
    ready = held.route(messages, now=5.0)
    assert {tag for _, tag in ready} == {ORIGINAL}
    sent_now = {id(m) for m, _ in ready}
    late = [m for m in messages if id(m) not in sent_now]
    assert held.held_late == len(late) == 200 - len(ready)
    assert 70 <= len(late) <= 130
    assert held.due(14.99) == []
    assert held.due(15.0) == [(m, LATE) for m in late]
    assert held.held_late == 0


def test_jitter_disorders_arrivals_within_the_jitter_but_never_changes_event_times() -> None:
    def run(options: DeliveryOptions | None) -> TimedTransport:
        clock = ManualClock(T0)
        transport = TimedTransport(clock)
        sim = Simulator(100, 1.0, 9, clock, transport, kinds=TYPED_ONLY, delivery=options)
        run_and_stop(sim, clock, 20.0)
        return transport

    plain, jittered = run(None), run(DeliveryOptions(jitter_s=2.0))

    def canonical(messages: list[Message]) -> list[bytes]:
        return sorted(msgspec.json.encode(m, order="sorted") for m in messages)

    assert canonical(jittered.messages) == canonical(plain.messages)
    assert len(plain.messages) == 2000
    in_order = [generated_at(m) for m in plain.messages]
    assert in_order == sorted(in_order)
    arrival = [generated_at(m) for m in jittered.messages]
    inversions = sum(1 for a, b in itertools.pairwise(arrival) if b < a)
    assert inversions > len(arrival) / 10
    delays = [t - generated_at(m) for t, _, m in jittered.sends()]
    assert all(-1e-9 <= d < 2.1 for d in delays)
    assert max(delays) > 1.9
    assert 0.9 <= statistics.fmean(delays) <= 1.2  # uniform over 0..2 s, sent at the next 0.1 s tick


def test_clock_skew_shifts_each_devices_event_times_by_its_own_fixed_offset() -> None:
    def run(skew_s: float) -> list[tuple[int, Message]]:
        clock, fleet = ManualClock(T0), Fleet(40, 1.0, 4, clock_skew_s=skew_s)
        sent: list[tuple[int, Message]] = []
        for _ in range(100):
            clock.advance(0.1)
            sent.extend((clock.now_us(), m) for m in fleet.advance(clock.monotonic(), clock.now_us()))
        return sent

    skewed, plain = run(2.0), run(0.0)
    offsets: dict[str, set[int]] = defaultdict(set)
    for now_us, m in skewed:
        offsets[m["device_id"]].add(parse_time(m.get("timestamp") or m["ts"]) - now_us)
    assert len(offsets) == 40
    assert all(len(seen) == 1 for seen in offsets.values())  # one offset per device, all along
    values = [next(iter(seen)) for seen in offsets.values()]
    assert all(-2_000_000 <= v <= 2_000_000 for v in values)
    assert min(values) < -1_000_000 < 1_000_000 < max(values)
    assert len(set(values)) > 30

    def without_time(m: Message) -> Message:
        return {k: v for k, v in m.items() if k not in ("timestamp", "ts")}

    assert [without_time(m) for _, m in skewed] == [without_time(m) for _, m in plain]  # ids, values
    assert run(2.0) == skewed


def test_truth_counts_each_delivered_reading_once_per_window_and_flags_the_held_ones(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    transport, truth = TimedTransport(clock), GroundTruth(10.0)
    options = DeliveryOptions(jitter_s=1.0, duplicates=0.1, late=0.05, late_delay_s=15.0)
    sim = Simulator(60, 2.0, 21, clock, transport, delivery=options, clock_skew_s=1.5, truth=truth)
    run_and_stop(sim, clock, 45.0)
    assert sim.duplicates_sent > 0
    assert sim.late_sent > 0

    # Independently: the server's decoder over the first copy of each message the transport took.
    first: dict[tuple[str, str], tuple[float, Message]] = {}
    for t, _, m in transport.sends():
        first.setdefault(key(m), (t, m))
    body = msgspec.json.encode([m for _, m in first.values()])
    decoded = decode_body(body, "json", DecodeContext(clock.now_us(), 3_600_000_000), max_items=len(first))
    assert decoded.rejected == []
    expected: Counter[tuple[str, int]] = Counter()
    expected_late: Counter[tuple[str, int]] = Counter()
    for (t, _), message in zip(first.values(), decoded.messages, strict=True):
        held = t - (message.ts - T0) / 1e6 > 10.0  # on time: < 1.1 s jitter + 1.5 s skew; held: > 13.5 s
        for r in message.readings:
            cell = (r.sensor, r.ts - r.ts % 10_000_000)
            expected[cell] += 1
            expected_late[cell] += held
    rows = {(r.sensor, r.window_start_us): (r.count, r.late) for r in truth.rows()}
    assert rows == {cell: (n, expected_late[cell]) for cell, n in expected.items()}
    assert truth.messages == len(first)
    assert truth.late_readings == sum(expected_late.values()) > 0

    write_truth(tmp_path / "truth.json", truth, {"seed": 21}, complete=True)
    doc = json.loads((tmp_path / "truth.json").read_text())
    assert (doc["format"], doc["complete"], doc["window_s"], doc["seed"]) == (
        "fleetstream-simulator-truth",
        True,
        10.0,
        21,
    )
    assert doc["totals"]["readings"] == sum(expected.values())
    from_json = {
        (w["sensor"], parse_time(w["window_start"])): (w["count"], w["late"], w["on_time"])
        for w in doc["windows"]
    }
    assert from_json == {
        cell: (n, expected_late[cell], n - expected_late[cell]) for cell, n in expected.items()
    }
    assert all(
        parse_time(w["window_end"]) - parse_time(w["window_start"]) == 10_000_000 for w in doc["windows"]
    )
    write_truth(tmp_path / "truth.csv", truth, {}, complete=True)
    with (tmp_path / "truth.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["sensor", "window_start", "window_end", "count", "late", "on_time"]
    from_csv = {
        (r["sensor"], parse_time(r["window_start"])): (int(r["count"]), int(r["late"])) for r in table
    }
    assert from_csv == rows


def test_truth_windows_follow_the_chosen_size_aligned_to_the_epoch() -> None:
    truth = GroundTruth(60.0)
    for seconds in (0.0, 59.999, 60.0, 119.5):
        truth.add({"device_id": "t", "timestamp": iso_ms(T0 + round(seconds * 1e6)), "temperature": 1.0})
    minute = T0 - T0 % 60_000_000
    assert [(r.window_start_us - minute, r.count) for r in truth.rows()] == [
        (0, 1),
        (60_000_000, 2),
        (120_000_000, 1),
    ]


def test_simulate_refuses_bad_delivery_options_and_an_unwritable_truth_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = "http://127.0.0.1:1"
    assert simulate(10, 1.0, target, 1.0, None, 500, jitter="2 sec") == 2
    assert "--jitter: expected a duration" in capsys.readouterr().err
    assert simulate(10, 1.0, target, 1.0, None, 500, late=-0.1) == 2
    assert "late is a fraction" in capsys.readouterr().err
    assert simulate(10, 1.0, target, 1.0, None, 500, truth=tmp_path / "no" / "such" / "t.json") == 2
    assert "--truth: cannot write" in capsys.readouterr().err
    assert simulate(10, 1.0, target, 1.0, None, 500, truth=tmp_path / "t.csv", truth_window="0") == 2
    assert "truth window" in capsys.readouterr().err


def test_simulator_doctests() -> None:
    for module in (delivery_module, truth_module, fleet_module, fleet_kinds_module, schedule_module):
        failed, attempted = doctest.testmod(module)
        assert (failed, attempted > 0) == (0, True), module.__name__


def test_the_fleet_of_up_takes_the_delivery_knobs_and_the_pipeline_stores_each_message_once() -> None:
    knobs = {"jitter_s": "500ms", "duplicates": 0.2, "late": 0.1, "late_delay_s": "2s", "clock_skew_s": 1}
    settings = Settings(simulator={"devices": 30, "seed": 8, **knobs})

    async def scenario() -> tuple[Harness, Simulator]:
        async with Harness(settings) as h:
            sim = add_simulator(h.runtime)  # after the start: ticked by hand, stopped by the runtime
            await sim.tick()
            for _ in range(100):
                h.clock.advance(0.1)
                await sim.tick()
                await asyncio.sleep(0)
        return h, sim

    h, sim = asyncio.run(scenario())
    assert sim.delivery.options == DeliveryOptions(jitter_s=0.5, duplicates=0.2, late=0.1, late_delay_s=2.0)
    skews = [d.skew_us for d in sim.fleet.devices]
    assert all(-1_000_000 <= s <= 1_000_000 for s in skews)
    assert len(set(skews)) == 30
    assert sim.errors == sim.dropped == 0
    assert sim.duplicates_sent > 0
    assert sim.late_sent > 0
    stored = [(m.device_id, m.msg_id) for m in h.store.messages]
    assert len(stored) == len(set(stored)) == sim.acknowledged - sim.duplicates_sent
    assert len(stored) == sim.generated - sim.late_unsent
