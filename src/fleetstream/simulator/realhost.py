"""``--real-host``: one extra device reporting this machine's real load, memory, temperatures and fans.

::

    HostSource.sample()  (psutil, in a worker thread)  →  HostSample
        →  RealHost.messages(sample, now_us)  →  the simulator's queue, beside the fleet's messages

It speaks the formats of simulated host monitors: a ``startup`` envelope
once, then per sample a ``heartbeat`` envelope (``cpu_usage``,
``mem_usage``), a ``temperature`` envelope (the hottest sensor) when the OS
exposes temperatures, a multi-sensor host record (Load per core,
Temperature per sensor, Clock) and one ``fan_rpm/<fan>`` reading per fan
(fans report revolutions per minute, not the host records' CFM). A sensor
the OS does not expose is skipped and logged once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from fleetstream.ingest.devicetypes import HOST_MONITOR
from fleetstream.simulator.models import iso_ms

log = logging.getLogger(__name__)

Message = dict[str, Any]
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9_.:@!\-]")


@dataclass(frozen=True, slots=True)
class HostSample:
    """One reading of this machine's sensors.

    Attributes:
        cpu_percent: CPU load of the whole machine since the previous sample, in %.
        mem_percent: memory in use, in %.
        core_percents: CPU load per core, in %.
        temperatures: ``(label, °C)`` per temperature sensor.
        fans: ``(label, rpm)`` per fan.
        clock_ghz: the CPU's current clock, when known.
    """

    cpu_percent: float
    mem_percent: float
    core_percents: tuple[float, ...] = ()
    temperatures: tuple[tuple[str, float], ...] = ()
    fans: tuple[tuple[str, float], ...] = ()
    clock_ghz: float | None = None


class HostSource(Protocol):
    """Reads the machine's sensors. May block for a few milliseconds: called in a worker thread."""

    def sample(self) -> HostSample:
        """The sensors now."""
        ...


class PsutilSource:
    """A :class:`HostSource` over psutil; sensors the OS does not expose are skipped, logged once.

    Args:
        psutil_module: the psutil module (or anything with its functions); None imports psutil.
    """

    def __init__(self, psutil_module: Any = None) -> None:
        if psutil_module is None:
            import psutil

            psutil_module = psutil
        self._ps = psutil_module
        self._missing: set[str] = set()
        # cpu_percent(interval=None) compares with the previous call: prime it, so that the
        # first sample is the load since now rather than 0.0, and no call ever sleeps.
        self._ps.cpu_percent(interval=None)
        self._ps.cpu_percent(interval=None, percpu=True)

    def sample(self) -> HostSample:
        """CPU and memory always; temperatures, fans and clock where the OS has them."""
        ps = self._ps
        cores = tuple(float(p) for p in ps.cpu_percent(interval=None, percpu=True))
        return HostSample(
            cpu_percent=float(ps.cpu_percent(interval=None)),
            mem_percent=float(ps.virtual_memory().percent),
            core_percents=cores,
            temperatures=self._labelled("sensors_temperatures", "temperatures", "current"),
            fans=self._labelled("sensors_fans", "fans", "current"),
            clock_ghz=self._clock(),
        )

    def _labelled(self, function: str, what: str, field: str) -> tuple[tuple[str, float], ...]:
        read = getattr(self._ps, function, None)  # absent on some platforms (macOS has no fans)
        groups = read() if read is not None else {}
        out: list[tuple[str, float]] = []
        for chip, entries in (groups or {}).items():
            for i, entry in enumerate(entries):
                out.append((entry.label or f"{chip} #{i + 1}", float(getattr(entry, field))))
        if not out:
            self._once(what)
        return tuple(out)

    def _clock(self) -> float | None:
        read = getattr(self._ps, "cpu_freq", None)
        freq = read() if read is not None else None
        if freq is None or not freq.current > 0:
            self._once("CPU clock")
            return None
        return round(float(freq.current) / 1000.0, 3)

    def _once(self, what: str) -> None:
        if what not in self._missing:
            self._missing.add(what)
            log.info("real host: this machine exposes no %s; skipping them", what)


def host_device_id(hostname: str | None = None) -> str:
    """``host-<hostname>``, characters a device id may not hold replaced by ``-``, at most 128.

    >>> host_device_id("build box.local")
    'host-build-box.local'
    """
    name = hostname if hostname is not None else socket.gethostname()
    return ("host-" + _NOT_IN_ID.sub("-", name or "unknown"))[:128]


class RealHost:
    """The real host as a device: when a sample is due, and the messages a sample becomes.

    Args:
        source: reads the sensors (psutil, or a fake in tests).
        device_id: the device's id (default ``host-<hostname>``).
        period_s: seconds between samples.

    Example:
        >>> host = RealHost(PsutilSource(), "host-a", period_s=2.0)
        >>> [m["type"] for m in host.messages(HostSample(12.5, 40.0), 1_680_033_862_000_000)]
        ['startup', 'heartbeat']
    """

    def __init__(self, source: HostSource, device_id: str | None = None, *, period_s: float = 1.0) -> None:
        if not period_s > 0:
            msg = f"the real host's sampling period must be > 0 s, got {period_s}"
            raise ValueError(msg)
        self.source = source
        self.device_id = device_id or host_device_id()
        self.period_s = period_s
        self.samples = 0
        self._next_s = 0.0
        self._seq = 0
        self._boot = ""
        self._task: asyncio.Future[HostSample] | None = None
        self._failed_logged = False

    def due(self, elapsed_s: float) -> bool:
        """Whether a sample is due at ``elapsed_s``; if so, the next one is a period later."""
        if elapsed_s < self._next_s:
            return False
        self._next_s = max(self._next_s + self.period_s, elapsed_s)
        return True

    def messages(self, sample: HostSample, now_us: int) -> list[Message]:
        """The messages one sample becomes, stamped ``now_us`` (``startup`` first, once)."""
        ts = iso_ms(now_us)
        out: list[Message] = []
        if not self._boot:
            self._boot = format(now_us // 1000, "x")  # a new boot per run: not taken for re-sends
            out.append(self._envelope("startup", ts, {}))
        self.samples += 1
        out.append(
            self._envelope(
                "heartbeat",
                ts,
                {"cpu_usage": round(sample.cpu_percent, 2), "mem_usage": round(sample.mem_percent, 2)},
            )
        )
        if sample.temperatures:
            hottest = max(value for _, value in sample.temperatures)
            out.append(self._envelope("temperature", ts, {"temperature": round(hottest, 1)}))
        sensors: list[dict[str, Any]] = [
            {"type": "Load", "name": f"CPU Core #{i + 1}", "value": round(p, 1)}
            for i, p in enumerate(sample.core_percents)
        ]
        sensors += [
            {"type": "Temperature", "name": label, "value": round(v, 1)} for label, v in sample.temperatures
        ]
        if sample.clock_ghz is not None:
            sensors.append({"type": "Clock", "name": "CPU", "value": sample.clock_ghz})
        if sensors:
            out.append({"device_id": self.device_id, "ts": ts, "sensors": sensors, "msg_id": self._msg_id()})
        out.extend(
            {
                "device_id": self.device_id,
                "timestamp": ts,
                "sensor": f"fan_rpm/{label}",
                "value": round(rpm),
                "unit": "rpm",
                "device_type": HOST_MONITOR.name,
                "msg_id": self._msg_id(),
            }
            for label, rpm in sample.fans
        )
        return out

    def poll(self, elapsed_s: float, now_us: int) -> list[Message]:
        """Called each simulator tick: the messages of a finished sample, and a new sample started if due.

        Sampling runs in a worker thread, so reading slow sensor files never
        blocks the event loop; its messages go out on the next tick.
        """
        out: list[Message] = []
        task = self._task
        if task is not None and task.done():
            self._task = None
            if task.cancelled():
                pass
            elif (exc := task.exception()) is not None:
                if not self._failed_logged:  # a broken sensor driver: say so once, keep trying
                    self._failed_logged = True
                    log.warning("real host: sampling failed (%s: %s)", type(exc).__name__, exc)
            else:
                out = self.messages(task.result(), now_us)
        if self._task is None and self.due(elapsed_s):
            self._task = asyncio.ensure_future(asyncio.to_thread(self.source.sample))
        return out

    @property
    def sampling(self) -> asyncio.Future[HostSample] | None:
        """The sample being read in a worker thread, if any."""
        return self._task

    def cancel(self) -> None:
        """Forget a sample in progress (the simulator stops or pauses)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _msg_id(self) -> str:
        seq = self._seq
        self._seq += 1
        return f"{self._boot}-{seq}"

    def _envelope(self, kind: str, ts: str, event: dict[str, float]) -> Message:
        return {"device_id": self.device_id, "type": kind, "ts": ts, "event": event, "msg_id": self._msg_id()}


def real_host_for(rate: float) -> RealHost:
    """This machine as a device sampled ``rate`` times a second (at most every 10 s, at least every 1 s)."""
    return RealHost(PsutilSource(), period_s=min(10.0, max(1.0, 1.0 / rate)))
