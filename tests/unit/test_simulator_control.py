"""Changing a running fleet: adding and removing devices, rates of their own, forced states, moves."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from fleetstream.domain.clock import ManualClock
from fleetstream.domain.timeutil import parse_time
from fleetstream.errors import ConfigError
from fleetstream.simulator import Fleet, Simulator
from fleetstream.simulator.lifecycle import FAILING, OFF, LifecycleOptions
from fleetstream.simulator.schedule import Lane

T0_US = 1_680_033_600_000_000
NO_FAILURES = LifecycleOptions(failure_rate=0.0)
Message = dict[str, Any]


class Run:
    """A fleet driven in 0.1 s ticks of its own time."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.ticks = 0

    @property
    def now_s(self) -> float:
        return self.ticks / 10

    def go(self, seconds: float) -> list[Message]:
        out: list[Message] = []
        for _ in range(round(seconds * 10)):
            self.ticks += 1
            out.extend(self.fleet.advance(self.now_s, T0_US + self.ticks * 100_000))
        return out


def per_device(messages: list[Message]) -> Counter[str]:
    return Counter(m["device_id"] for m in messages)


def test_lane_members_added_and_removed_mid_cycle_are_handed_out_once_per_period() -> None:
    lane = Lane(1.0, [(0.1, "a"), (0.5, "b"), (0.9, "c")], start_s=0.0)
    assert lane.due(0.6) == ["a", "b"]
    lane.add(0.3, "early")  # its point of this cycle is past: first due in the next one
    lane.add(0.7, "late")  # still ahead in this cycle
    assert lane.remove({"b", "zzz"}) == 1
    assert lane.due(1.0) == ["late", "c"]
    assert lane.due(2.0) == ["a", "early", "late", "c"]
    assert lane.remove({"a", "c"}) == 2
    assert lane.due(3.0) == ["early", "late"]


def test_a_lane_emptied_for_a_while_goes_on_from_the_time_handed_out() -> None:
    lane = Lane(1.0, [(0.5, "a")])
    assert lane.due(0.7) == ["a"]
    lane.remove({"a"})
    assert lane.due(30.4) == []
    lane.add(0.2, "b")  # 30.2 is past: first due at 31.2
    lane.add(0.6, "c")  # first due at 30.6
    assert lane.due(31.0) == ["c"]
    assert lane.due(32.0) == ["b", "c"]


def test_a_lane_made_mid_run_hands_out_nothing_before_its_start() -> None:
    lane = Lane(2.0, [(0.5, "a"), (1.5, "b")], start_s=7.0)  # cycle 3, at 1.0 into it
    assert lane.due(7.9) == ["b"]
    assert lane.due(10.0) == ["a", "b"]


def test_added_devices_are_numbered_on_and_send_from_when_they_are_added() -> None:
    run = Run(Fleet(2, 1.0, 3, {"thermostat": 1}, lifecycle=NO_FAILURES))
    run.go(5)
    added = run.fleet.add("thermostat", 2, run.now_s)
    assert [d.device_id for d in added] == ["thermostat-0003", "thermostat-0004"]
    assert len(run.fleet) == 4
    sent = per_device(run.go(10))
    # One message per device per second; a new device's first may fall in the next period.
    assert sent["thermostat-0001"] == sent["thermostat-0002"] == 10
    assert 9 <= sent["thermostat-0003"] <= 10
    assert 9 <= sent["thermostat-0004"] <= 10


def test_an_added_host_sends_startup_once_then_its_heartbeats() -> None:
    run = Run(Fleet(1, 1.0, 3, {"thermostat": 1}, lifecycle=NO_FAILURES))
    run.go(2)
    run.fleet.add("host", 1, run.now_s)
    sent = [m for m in run.go(30) if m["device_id"] == "host-0001"]
    kinds = Counter(m.get("type") for m in sent)
    assert sent[0]["type"] == "startup"
    assert kinds["startup"] == 1
    # Every 15 s and every 3 s; the first of each within a period of being added.
    assert kinds["heartbeat"] in (1, 2)
    assert kinds["temperature"] in (9, 10)


def test_removed_devices_stop_sending_and_go_off() -> None:
    run = Run(Fleet(6, 1.0, 3, {"thermostat": 1, "host": 1}, lifecycle=NO_FAILURES))
    run.go(20)
    removed = run.fleet.remove(["host-0002", "thermostat-0001", "no-such"], run.now_s)
    assert removed == ["host-0002", "thermostat-0001"]
    assert len(run.fleet) == 4
    assert sorted(run.fleet.active) == ["host-0001", "host-0003", "thermostat-0002", "thermostat-0003"]
    sent = per_device(run.go(30))
    assert set(sent) == {"host-0001", "host-0003", "thermostat-0002", "thermostat-0003"}
    index = run.fleet.devices[1].index  # devices keep their index: the ground truth names them
    assert run.fleet.devices[1].device_id == "host-0001"
    assert run.fleet.life.state[0] == OFF
    assert run.fleet.life.state[index] != OFF
    assert [t.new for t in run.fleet.transitions[-2:]] == [OFF, OFF]


def test_a_device_with_a_rate_of_its_own_sends_at_that_rate() -> None:
    run = Run(Fleet(2, 1.0, 3, {"thermostat": 1, "host": 1}, lifecycle=NO_FAILURES))
    run.go(1)
    run.fleet.set_rate("thermostat-0001", 4.0, run.now_s)
    run.fleet.set_rate("host-0001", 3.0, run.now_s)  # heartbeat every 5 s, temperature every 1 s
    assert run.fleet.rate_of(run.fleet.active["thermostat-0001"]) == 4.0
    sent = run.go(30)
    assert 119 <= per_device(sent)["thermostat-0001"] <= 120
    host = Counter(m.get("type") for m in sent if m["device_id"] == "host-0001")
    assert (host["heartbeat"], host["temperature"]) in {(5, 29), (5, 30), (6, 29), (6, 30)}
    run.fleet.set_rate("thermostat-0001", 1.0, run.now_s)  # back to the fleet's lanes
    assert run.fleet.rates == {run.fleet.active["host-0001"].index: 3.0}
    assert 9 <= per_device(run.go(10))["thermostat-0001"] <= 10
    with pytest.raises(ConfigError, match="rate"):
        run.fleet.set_rate("thermostat-0001", 0.0, run.now_s)


def test_forcing_a_host_to_fail_slows_its_fan_and_heats_it_at_once() -> None:
    run = Run(Fleet(1, 1.0, 3, {"host": 1}, lifecycle=NO_FAILURES))
    before = run.go(60)
    fans = [m["value"] for m in before if m.get("sensor") == "fan_rpm"]
    temps = [m["event"]["temperature"] for m in before if m.get("type") == "temperature"]
    run.fleet.force("host-0001", "failing", run.now_s)
    assert run.fleet.life.state[0] == FAILING
    after = run.go(30)
    # Failing begins at severity 0.5: the fan at 65 % of its speed, the temperature 10 °C up.
    assert max(m["value"] for m in after if m.get("sensor") == "fan_rpm") < 0.8 * min(fans)
    hot = [m["event"]["temperature"] for m in after if m.get("type") == "temperature"]
    assert sum(hot) / len(hot) > sum(temps) / len(temps) + 5
    assert run.fleet.life.episodes == []  # forced straight to failing: no degradation to score


def test_forcing_offline_silences_a_device_until_forced_running() -> None:
    run = Run(Fleet(2, 1.0, 3, {"thermostat": 1}, lifecycle=NO_FAILURES))
    run.go(5)
    run.fleet.force("thermostat-0001", "offline", run.now_s)
    assert per_device(run.go(10))["thermostat-0001"] == 0
    run.fleet.force("thermostat-0001", "running", run.now_s)
    assert 9 <= per_device(run.go(10))["thermostat-0001"] <= 10


def test_a_tracker_moves_to_a_point_of_its_region_only() -> None:
    run = Run(Fleet(2, 1.0, 3, {"thermostat": 1, "tracker": 1}, lifecycle=NO_FAILURES))
    run.go(3)
    run.fleet.move_to("tracker-0001", 52.36, 4.88)
    lats = [m["value"] for m in run.go(1) if m.get("sensor") == "latitude"]
    assert lats
    assert abs(lats[0] - 52.36) < 30 / 111_320 * 1.01  # one step: at most 30 m
    with pytest.raises(ConfigError, match="outside the region"):
        run.fleet.move_to("tracker-0001", 48.85, 2.35)
    with pytest.raises(ConfigError, match="not a tracker"):
        run.fleet.move_to("thermostat-0001", 52.36, 4.88)
    with pytest.raises(ConfigError, match="unknown device kind 'toaster'"):
        run.fleet.add("toaster", 1, run.now_s)
    with pytest.raises(ConfigError, match=">= 1"):
        run.fleet.add("tracker", 0, run.now_s)


def test_pause_leaves_the_paused_stretch_out_and_resume_goes_on() -> None:
    clock = ManualClock(parse_time("2023-03-28T20:00:00Z"))
    sent: list[Message] = []

    class Collect:
        async def start(self) -> None: ...

        async def send(self, batch: list[Message]) -> None:
            sent.extend(batch)

        async def close(self) -> None: ...

    sim = Simulator(10, 1.0, 5, clock, Collect(), kinds={"thermostat": 1}, lifecycle=NO_FAILURES)

    async def ticks(seconds: float) -> None:
        # By hand: the loop ticks too, but on a manual clock a tick with no time passed sends nothing.
        for _ in range(round(seconds * 10)):
            clock.advance(0.1)
            await sim.tick()
            await asyncio.sleep(0)

    async def scenario() -> None:
        await sim.start()
        await ticks(10)
        await sim.pause()
        await sim.pause()
        assert sim.paused
        assert not sim.running
        clock.advance(60.0)  # a minute stopped
        await sim.resume()
        await sim.resume()
        assert sim.running
        assert not sim.paused
        await ticks(10)
        await sim.stop()

    asyncio.run(scenario())
    assert sim.dropped == 0
    assert 199 <= len(sent) <= 200  # 10 devices x 20 s of running time, none for the minute


def test_the_queue_limit_follows_the_fleet_it_was_sized_to() -> None:
    clock = ManualClock(parse_time("2023-03-28T20:00:00Z"))
    sim = Simulator(10, 1.0, 5, clock, None, kinds={"thermostat": 1}, batch_size=10)  # type: ignore[arg-type]
    assert sim.max_pending == 100  # 10 s of 10 messages/s
    sim.fleet.add("host", 150, 0.0)  # + 150 x (3/15 + 1/3) messages/s = 80/s
    sim.resized()
    assert sim.max_pending == 900
    fixed = Simulator(10, 1.0, 5, clock, None, max_pending=50)  # type: ignore[arg-type]
    fixed.fleet.add("host", 150, 0.0)
    fixed.resized()
    assert fixed.max_pending == 50
