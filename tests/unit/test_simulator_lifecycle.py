"""Simulated device lifecycles, failure precursors, the failures file, and trackers."""

from __future__ import annotations

import csv
import doctest
import itertools
import json
import math
import random
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from fleetstream.domain.clock import ManualClock
from fleetstream.domain.timeutil import parse_time
from fleetstream.errors import ConfigError
from fleetstream.simulator import Fleet, failures, lifecycle, parse_kinds, tracker
from fleetstream.simulator.cli import simulate
from fleetstream.simulator.failures import failure_rows, write_failures
from fleetstream.simulator.lifecycle import (
    DEGRADED,
    FAILED,
    FAILING,
    MAINTENANCE,
    OFFLINE,
    RUNNING,
    STARTING,
    LifecycleOptions,
    Lifecycles,
)
from fleetstream.simulator.tracker import MAX_SPEED_MS, Region

Message = dict[str, Any]
T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
EARTH_RADIUS_M = 6_371_000.0


def drive(fleet: Fleet, clock: ManualClock, seconds: float, tick: float = 0.5) -> list[Message]:
    """Advance a fleet started at ``T0`` (its elapsed time is the clock's time since then)."""
    out: list[Message] = []
    for _ in range(round(seconds / tick)):
        clock.advance(tick)
        out.extend(fleet.advance((clock.now_us() - T0) / 1e6, clock.now_us()))
    return out


def ts_s(m: Message) -> float:
    """A message's event time, seconds after T0."""
    return (parse_time(m.get("timestamp") or m["ts"]) - T0) / 1e6


def test_time_to_degrade_follows_the_failure_rate_and_the_recovery_chance() -> None:
    options = LifecycleOptions(
        failure_rate=60.0, offline_rate=30.0, recover_chance=0.25, starting_s=(1.0, 1.0)
    )
    life = Lifecycles(4000, options, random.Random(5))
    transitions = life.advance(3600.0)
    left: dict[int, float] = {}
    waits, degraded, offline, recovered, failing = [], 0, 0, 0, 0
    for t in transitions:
        if t.new == RUNNING and t.old == STARTING:
            left[t.device] = t.at_s
        elif t.old == RUNNING and t.device in left and t.new in (DEGRADED, OFFLINE):
            waits.append(t.at_s - left.pop(t.device))
            degraded += t.new == DEGRADED
            offline += t.new == OFFLINE
        elif t.old == DEGRADED:
            recovered += t.new == RUNNING
            failing += t.new == FAILING
    # Competing exponential clocks: the first exit comes after 3600 / (60 + 30) s = 40 s on average,
    # and two thirds of the exits are degradations.
    assert statistics.fmean(waits) == pytest.approx(40.0, rel=0.05)
    assert degraded / (degraded + offline) == pytest.approx(2 / 3, abs=0.03)
    assert recovered / (recovered + failing) == pytest.approx(0.25, abs=0.03)


def test_transitions_are_the_same_however_time_is_split() -> None:
    def run(step: float) -> list[tuple[int, float, int, int]]:
        life = Lifecycles(50, LifecycleOptions(failure_rate=20.0, maintenance_rate=5.0), random.Random(9))
        out = []
        for i in range(1, round(3600 / step) + 1):
            out.extend((t.device, t.at_s, t.old, t.new) for t in life.advance(i * step))
        return out

    assert run(0.1) == run(7.0)
    assert {new for *_, new in run(7.0)} >= {STARTING, RUNNING, DEGRADED, FAILING, FAILED, MAINTENANCE}


def test_bad_rates_are_refused() -> None:
    with pytest.raises(ConfigError, match="failure_rate"):
        LifecycleOptions(failure_rate=-1.0)
    with pytest.raises(ConfigError, match="recover_chance"):
        LifecycleOptions(recover_chance=1.5)


def host_failure(seed: int) -> tuple[Fleet, list[Message]]:
    """Hosts that degrade at 600 s (4 min degraded, 2 min failing), driven for 20 min."""
    options = LifecycleOptions(
        failure_rate=0.0, recover_chance=0.0, degraded_s=(240, 240), failing_s=(120, 120)
    )
    fleet = Fleet(4, 1.0, seed, kinds={"host": 1}, lifecycle=options)
    clock = ManualClock(T0)
    messages = [*fleet.advance(0.0, clock.now_us()), *drive(fleet, clock, 600)]
    for i in range(len(fleet)):
        fleet.life.force(i, DEGRADED, 600.0)
    messages += drive(fleet, clock, 600)
    return fleet, messages


def series(messages: list[Message], device_id: str, sensor: str) -> list[tuple[float, float]]:
    out = []
    for m in messages:
        if m["device_id"] != device_id:
            continue
        if m.get("sensor") == sensor:
            out.append((ts_s(m), float(m["value"])))
        elif sensor in m.get("event", {}):
            out.append((ts_s(m), float(m["event"][sensor])))
    return out


def first_beyond(points: list[tuple[float, float]], healthy_until: float, margin: float) -> float:
    """When a sensor first left its healthy range (its values before ``healthy_until``) by ``margin``:
    upwards for a positive margin, downwards for a negative one."""
    healthy = [v for t, v in points if t < healthy_until]
    if margin > 0:
        return next(t for t, v in points if t >= healthy_until and v > max(healthy) + margin)
    return next(t for t, v in points if t >= healthy_until and v < min(healthy) + margin)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_failing_host_shows_its_fan_slow_then_heat_load_and_voltage_before_it_falls_silent(
    seed: int,
) -> None:
    fleet, messages = host_failure(seed)
    rows = failure_rows(fleet)
    assert len(rows) == 4
    for row in rows:
        device = row["device_id"]
        degraded_at = (parse_time(row["degraded_at"]) - T0) / 1e6
        failing_at = (parse_time(row["failing_at"]) - T0) / 1e6
        failed_at = (parse_time(row["failed_at"]) - T0) / 1e6
        assert (degraded_at, failing_at, failed_at) == (600.0, 840.0, 960.0)
        fan = first_beyond(series(messages, device, "fan_rpm"), 600, -100)
        temperature = first_beyond(series(messages, device, "temperature"), 600, 5)
        voltage = first_beyond(series(messages, device, "voltage"), 600, -0.1)
        assert degraded_at < fan < temperature < failed_at, (fan, temperature)
        assert fan < voltage < failed_at
        # Load is too noisy a signal for a first crossing: its mean while failing is well up.
        load = series(messages, device, "cpu_usage")
        healthy = statistics.fmean(v for t, v in load if t < degraded_at)
        assert statistics.fmean(v for t, v in load if failing_at <= t) > healthy + 15
        # Failed means silent: nothing stamped at or after the failure.
        last = max(ts_s(m) for m in messages if m["device_id"] == device)
        assert failed_at - 3.0 <= last < failed_at


def test_a_degrading_thermostat_gets_noisier() -> None:
    options = LifecycleOptions(
        failure_rate=0.0, recover_chance=0.0, degraded_s=(300, 300), failing_s=(300, 300)
    )
    fleet = Fleet(10, 1.0, 4, kinds={"thermostat": 1}, lifecycle=options)
    clock = ManualClock(T0)
    healthy = drive(fleet, clock, 600)
    for i in range(len(fleet)):
        fleet.life.force(i, DEGRADED, 600.0)
    sick = [m for m in drive(fleet, clock, 600) if ts_s(m) >= 900]  # from the failing half of the ramp

    def step_spread(messages: list[Message]) -> float:
        by_device: dict[str, list[float]] = defaultdict(list)
        for m in messages:
            by_device[m["device_id"]].append(m["temperature"])
        return statistics.pstdev([b - a for v in by_device.values() for a, b in itertools.pairwise(v)])

    assert step_spread(sick) > 5 * step_spread(healthy)


def test_the_failures_file_equals_the_transitions(tmp_path: Path) -> None:
    options = LifecycleOptions(failure_rate=30.0, recover_chance=0.3, offline_rate=5.0)
    fleet = Fleet(30, 1.0, 8, kinds={"host": 1, "thermostat": 1, "tracker": 1}, lifecycle=options)
    clock = ManualClock(T0)
    messages = [*fleet.advance(0.0, clock.now_us()), *drive(fleet, clock, 1800, tick=1.0)]

    # The episodes, rebuilt from the transitions the fleet went through.
    expected: list[dict[str, Any]] = []
    open_: dict[int, dict[str, Any]] = {}

    def at(seconds: float) -> str:
        return parse_iso(T0 + round(seconds * 1e6))

    for t in fleet.transitions:
        if t.new == DEGRADED:
            row = {"device_id": fleet.devices[t.device].device_id, "type": fleet.devices[t.device].kind.tag}
            row |= {"degraded_at": at(t.at_s), "failing_at": None, "failed_at": None, "recovered_at": None}
            open_[t.device] = row
            expected.append(row)
        elif t.device in open_ and t.new == FAILING:
            open_[t.device]["failing_at"] = at(t.at_s)
        elif t.device in open_ and t.new == FAILED:
            open_.pop(t.device)["failed_at"] = at(t.at_s)
        elif t.device in open_:
            open_.pop(t.device)["recovered_at"] = at(t.at_s)
    rows = failure_rows(fleet)
    assert rows == expected
    assert {r["failed_at"] is None for r in rows} == {True, False}  # some failed, some recovered or open
    assert any(r["recovered_at"] for r in rows)

    # A device sends nothing between its failure and its repair.
    for r in rows:
        if r["failed_at"] is None:
            continue
        failed = (parse_time(r["failed_at"]) - T0) / 1e6
        stamps = [ts_s(m) for m in messages if m["device_id"] == r["device_id"]]
        assert not [s for s in stamps if failed <= s < failed + 600], r  # repairs take at least 600 s

    jsonl, table = tmp_path / "failures.jsonl", tmp_path / "failures.csv"
    write_failures(jsonl, rows)
    write_failures(table, rows)
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == rows
    with table.open(newline="") as f:
        assert list(csv.DictReader(f)) == [{k: v or "" for k, v in r.items()} for r in rows]


def parse_iso(us: int) -> str:
    seconds, rest = divmod(us, 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:03d}Z"


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine), independent of the simulator's flat-earth steps."""
    (lat1, lon1), (lat2, lon2) = (tuple(map(math.radians, p)) for p in (a, b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def bearing(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Direction of travel from report ``a`` to report ``b``, degrees clockwise from north."""
    return math.degrees(math.atan2((b[2] - a[2]) * math.cos(math.radians(a[1])), b[1] - a[1]))


def tracks(messages: list[Message]) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per tracker: (time, latitude, longitude, temperature) per report."""
    parts: dict[tuple[str, float], dict[str, float]] = defaultdict(dict)
    for m in messages:
        assert m["device_type"] == "Tracker"
        parts[m["device_id"], ts_s(m)][m["sensor"]] = m["value"]
    out: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    for (device, t), p in sorted(parts.items()):
        assert set(p) == {"latitude", "longitude", "temperature"}
        out[device].append((t, p["latitude"], p["longitude"], p["temperature"]))
    return out


def test_trackers_move_at_plausible_speeds_turn_smoothly_and_stay_in_the_region() -> None:
    region = Region(52.30, 4.75, 52.42, 5.00)
    options = LifecycleOptions(failure_rate=0.0)
    fleet = Fleet(20, 1.0, 11, kinds={"tracker": 1}, lifecycle=options)
    clock = ManualClock(T0)
    by_tracker = tracks(drive(fleet, clock, 3600, tick=1.0))
    assert len(by_tracker) == 20
    speeds, on_edge, points = [], 0, 0
    for reports in by_tracker.values():
        assert len(reports) == 3600
        for (t1, la1, lo1, te1), (t2, la2, lo2, te2) in itertools.pairwise(reports):
            assert region.contains(la2, lo2)
            speeds.append(distance_m((la1, lo1), (la2, lo2)) / (t2 - t1))
            assert abs(te2 - te1) < 1.0  # a random walk, not noise
            points += 1
            on_edge += la2 in (region.south, region.north) or lo2 in (region.west, region.east)
        # Between consecutive one-second steps of more than 2 m (so that rounding cannot blur the heading):
        turns = []
        for a, b, c in zip(reports, reports[1:], reports[2:], strict=False):
            if min(distance_m(a[1:3], b[1:3]), distance_m(b[1:3], c[1:3])) > 2.0:
                turns.append(abs((bearing(b, c) - bearing(a, b) + 180) % 360 - 180))
        assert max(turns) <= 25.0  # at most 20°/s, plus what 6 decimals of a degree blur
        # It covers ground: tens of kilometres in an hour.
        assert sum(distance_m(a[1:3], b[1:3]) for a, b in itertools.pairwise(reports)) > 10_000
    assert max(speeds) <= MAX_SPEED_MS + 0.2  # rounding to 1e-6° moves a point by up to ~0.1 m
    assert 5.0 <= statistics.fmean(speeds) <= 20.0
    assert on_edge / points < 0.01  # steering back, not sliding along the border


def test_a_region_is_parsed_and_checked() -> None:
    assert Region.parse("51.0,3.0,52.0,4.5") == Region(51.0, 3.0, 52.0, 4.5)
    with pytest.raises(ConfigError, match="south,west,north,east"):
        Region.parse("51,3,52")
    with pytest.raises(ConfigError, match="south < north"):
        Region.parse("52,3,51,4")
    fleet = Fleet(3, 1.0, 2, kinds={"tracker": 1}, region=Region(10.0, 20.0, 10.01, 20.01))
    for _, lat, lon, _ in next(iter(tracks(drive(fleet, ManualClock(T0), 120)).values())):
        assert 10.0 <= lat <= 10.01
        assert 20.0 <= lon <= 20.01


def test_a_seed_repeats_the_data_and_the_failures() -> None:
    def run(seed: int) -> tuple[list[Message], list[dict[str, Any]]]:
        options = LifecycleOptions(failure_rate=20.0, offline_rate=5.0)
        fleet = Fleet(24, 1.0, seed, lifecycle=options)
        clock = ManualClock(T0)
        return [*fleet.advance(0.0, clock.now_us()), *drive(fleet, clock, 1200, tick=1.0)], failure_rows(
            fleet
        )

    first, again, other = run(3), run(3), run(4)
    assert first == again
    assert first[1]
    assert first[1] != other[1]
    assert first[0] != other[0]


def test_lifecycle_doctests() -> None:
    for module in (lifecycle, tracker, failures):
        assert doctest.testmod(module).failed == 0


def test_simulate_refuses_unknown_kinds_a_bad_region_or_rate_and_an_unwritable_failures_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = "http://127.0.0.1:1"
    assert simulate(10, 1.0, target, 1.0, None, 500, kinds="thermostat,toaster") == 2
    assert "--kinds: unknown device kind 'toaster'" in capsys.readouterr().err
    assert simulate(10, 1.0, target, 1.0, None, 500, kinds="host=many") == 2
    assert "weight of host must be a number" in capsys.readouterr().err
    assert simulate(10, 1.0, target, 1.0, None, 500, region="52,4") == 2
    assert "--region: expected south,west,north,east" in capsys.readouterr().err
    assert simulate(10, 1.0, target, 1.0, None, 500, failure_rate=-1) == 2
    assert "failure_rate must be a finite rate >= 0" in capsys.readouterr().err
    assert simulate(10, 1.0, target, 1.0, None, 500, failures=tmp_path / "no" / "f.jsonl") == 2
    assert "--failures: cannot write" in capsys.readouterr().err


def test_kinds_read_names_with_optional_weights() -> None:
    assert parse_kinds("thermostat,tracker,host") == {"thermostat": 1.0, "tracker": 1.0, "host": 1.0}
    assert parse_kinds(" thermostat=3 , host=1") == {"thermostat": 3.0, "host": 1.0}
    fleet = Fleet(8, 1.0, 1, kinds=parse_kinds("thermostat=3,host=1"))
    assert sorted(d.device_id for d in fleet.devices) == [
        "host-0001",
        "host-0002",
        *(f"thermostat-000{i}" for i in range(1, 7)),
    ]
