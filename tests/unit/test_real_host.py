"""``--real-host``: this machine as one more device, from a fake psutil and from the real one."""

from __future__ import annotations

import asyncio
import doctest
import logging
import threading
from types import SimpleNamespace
from typing import Any

import msgspec
import psutil
import pytest

from fleetstream.config import Settings
from fleetstream.domain.clock import ManualClock
from fleetstream.ingest.decode import decode_body
from fleetstream.ingest.formats import DecodeContext
from fleetstream.simulator import Simulator
from fleetstream.simulator import realhost as realhost_module
from fleetstream.simulator.embedded import add_simulator
from fleetstream.simulator.realhost import HostSample, PsutilSource, RealHost, host_device_id
from fleetstream.testing import Harness

T0 = 1_700_000_000_000_000  # 2023-11-14T22:13:20.000Z
Message = dict[str, Any]


def fake_psutil(*, sensors: bool) -> SimpleNamespace:
    """A psutil-like module: a two-core machine, with or without temperature sensors, fans and a clock."""
    temps = {
        "coretemp": [
            SimpleNamespace(label="Package id 0", current=52.0),
            SimpleNamespace(label="Core 0", current=49.5),
        ],
        "nvme": [SimpleNamespace(label="", current=38.25)],
    }
    return SimpleNamespace(
        cpu_percent=lambda interval=None, percpu=False: [30.0, 10.0] if percpu else 20.0,
        virtual_memory=lambda: SimpleNamespace(percent=61.3),
        sensors_temperatures=lambda: temps if sensors else {},
        sensors_fans=lambda: (
            {"thinkpad": [SimpleNamespace(label="cpu fan", current=2213)]} if sensors else {}
        ),
        cpu_freq=lambda: SimpleNamespace(current=2596.0) if sensors else None,
    )


def decoded(messages: list[Message]) -> dict[str, float]:
    """The server's reading of messages: sensor → value (every message accepted)."""
    body = msgspec.json.encode(messages)
    out = decode_body(body, "json", DecodeContext(T0, 0), max_items=len(messages))
    assert out.rejected == []
    assert {m.device_type for m in out.messages} == {"Host Monitor"}
    return {r.sensor: r.value for m in out.messages for r in m.readings}


def test_a_fake_machine_with_every_sensor_becomes_the_host_formats() -> None:
    sample = PsutilSource(fake_psutil(sensors=True)).sample()
    assert sample == HostSample(
        cpu_percent=20.0,
        mem_percent=61.3,
        core_percents=(30.0, 10.0),
        temperatures=(("Package id 0", 52.0), ("Core 0", 49.5), ("nvme #1", 38.25)),
        fans=(("cpu fan", 2213.0),),
        clock_ghz=2.596,
    )
    host = RealHost(PsutilSource(fake_psutil(sensors=True)), "host-pc")
    messages = host.messages(sample, T0)
    assert [m.get("type", m.get("sensor", "record")) for m in messages] == [
        "startup",
        "heartbeat",
        "temperature",
        "record",
        "fan_rpm/cpu fan",
    ]
    assert {m["device_id"] for m in messages} == {"host-pc"}
    assert [m["msg_id"].split("-")[1] for m in messages] == ["0", "1", "2", "3", "4"]
    assert decoded(messages) == {
        "cpu_usage": 20.0,
        "mem_usage": 61.3,
        "temperature": 52.0,  # the hottest sensor
        "load/CPU Core #1": 30.0,
        "load/CPU Core #2": 10.0,
        "temperature/Package id 0": 52.0,
        "temperature/Core 0": 49.5,
        "temperature/nvme #1": 38.2,  # one decimal, as sent (38.25 rounds half to even)
        "clock/CPU": 2.596,
        "fan_rpm/cpu fan": 2213.0,
    }
    # Only the first sample starts the device.
    assert [m.get("type") for m in host.messages(sample, T0 + 1_000_000)][:1] == ["heartbeat"]


def test_a_machine_without_sensors_sends_load_and_memory_and_says_once_what_it_skips(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = PsutilSource(fake_psutil(sensors=False))
    with caplog.at_level(logging.INFO, logger=realhost_module.__name__):
        first, second = source.sample(), source.sample()
    assert first == second == HostSample(20.0, 61.3, (30.0, 10.0))
    skipped = [r.getMessage() for r in caplog.records]
    assert sorted(skipped) == [
        "real host: this machine exposes no CPU clock; skipping them",
        "real host: this machine exposes no fans; skipping them",
        "real host: this machine exposes no temperatures; skipping them",
    ]
    messages = RealHost(source, "host-bare").messages(first, T0)
    assert [m.get("type", "record") for m in messages] == ["startup", "heartbeat", "record"]
    assert decoded(messages) == {
        "cpu_usage": 20.0,
        "mem_usage": 61.3,
        "load/CPU Core #1": 30.0,
        "load/CPU Core #2": 10.0,
    }


def test_the_real_machine_reports_what_its_os_exposes() -> None:
    source = PsutilSource()
    sample = source.sample()
    assert 0.0 <= sample.cpu_percent <= 100.0
    assert 0.0 < sample.mem_percent < 100.0
    assert len(sample.core_percents) == psutil.cpu_count()
    exposed_temps = sum(len(v) for v in psutil.sensors_temperatures().values())
    exposed_fans = sum(len(v) for v in psutil.sensors_fans().values())
    assert len(sample.temperatures) == exposed_temps
    assert len(sample.fans) == exposed_fans
    freq = psutil.cpu_freq()
    assert (sample.clock_ghz is None) == (freq is None or freq.current <= 0)
    readings = decoded(RealHost(source, host_device_id()).messages(sample, T0))
    assert readings["mem_usage"] == round(sample.mem_percent, 2)
    assert 0.0 <= readings["cpu_usage"] <= 100.0
    assert sum(k.startswith("load/") for k in readings) == len(sample.core_percents)
    assert sum(k.startswith("temperature/") for k in readings) <= exposed_temps  # same-named chips merge
    assert ("temperature" in readings) == (exposed_temps > 0)


def test_host_device_id_keeps_to_the_device_id_rule() -> None:
    assert host_device_id("db-1") == "host-db-1"
    assert host_device_id("my box/2") == "host-my-box-2"
    assert host_device_id("") == "host-unknown"
    assert len(host_device_id("x" * 300)) == 128
    assert host_device_id() == host_device_id(__import__("socket").gethostname())


class CountingSource:
    """A fake source that records the thread each sample is read on."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def sample(self) -> HostSample:
        self.threads.append(threading.current_thread().name)
        return HostSample(float(len(self.threads)), 50.0)


class ListTransport:
    def __init__(self) -> None:
        self.batches: list[list[Message]] = []

    async def start(self) -> None:
        pass

    async def send(self, batch: list[Message]) -> None:
        self.batches.append(batch)

    async def close(self) -> None:
        pass


def test_the_simulator_samples_the_host_in_a_thread_once_per_period_beside_the_fleet() -> None:
    clock, source, transport = ManualClock(T0), CountingSource(), ListTransport()
    host = RealHost(source, "host-real", period_s=1.0)
    sim = Simulator(2, 1.0, 5, clock, transport, kinds={"thermostat": 1}, real_host=host)

    async def scenario() -> None:
        for _ in range(31):  # 3 s of ticks
            await sim.tick()
            if host.sampling is not None:  # let the sampling thread finish between ticks
                await asyncio.wait([host.sampling])
            clock.advance(0.1)
        await sim.stop()

    asyncio.run(scenario())
    sent = [m for batch in transport.batches for m in batch]
    heartbeats = [m["event"]["cpu_usage"] for m in sent if m.get("type") == "heartbeat"]
    assert heartbeats == [1.0, 2.0, 3.0]  # samples at 0, 1 and 2 s; the one at 3 s is dropped by stop
    assert len(source.threads) == 4
    assert threading.main_thread().name not in source.threads
    assert sum(m["device_id"] == "host-real" for m in sent) == 1 + 3  # startup, then a heartbeat per sample
    assert {m["device_id"] for m in sent} == {"host-real", "thermostat-0001", "thermostat-0002"}
    assert sim.generated == sim.acknowledged == len(sent)


def test_up_with_real_host_adds_the_machine_to_its_fleet() -> None:
    assert Settings().simulator.real_host is False
    settings = Settings(simulator={"devices": 0, "real_host": True, "rate": 0.5})

    async def scenario() -> Simulator:
        async with Harness(settings) as h:
            return add_simulator(h.runtime)

    sim = asyncio.run(scenario())
    assert sim.real_host is not None
    assert sim.real_host.device_id == host_device_id()
    assert sim.real_host.period_s == 2.0
    assert isinstance(sim.real_host.source, PsutilSource)


def test_realhost_doctests() -> None:
    failed, attempted = doctest.testmod(realhost_module)
    assert (failed, attempted > 0) == (0, True)
