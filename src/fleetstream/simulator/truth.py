"""Ground truth of a simulated run: how many distinct readings each event-time window should hold.

The simulator knows exactly what it delivered. :class:`GroundTruth` counts,
per ``(sensor, window_start)`` of tumbling event-time windows aligned to the
Unix epoch, the distinct readings the server acknowledged (a duplicate copy is
not counted again) and how many of them were held back on purpose (late). A
server with correct event-time windows, dedup and late-data handling reports
``count - late`` (the ``on_time`` column) readings in each such window, as
``GET /api/v1/windows?sensor=...&size=10s`` shows.

:func:`write_truth` writes it as JSON or CSV (chosen by the file's suffix);
``docs/simulator.md`` describes both formats.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetstream.domain.timeutil import parse_time, us_to_iso
from fleetstream.errors import ConfigError

Message = dict[str, Any]

FORMAT = "fleetstream-simulator-truth"
VERSION = 1
CSV_COLUMNS = ("sensor", "window_start", "window_end", "count", "late", "on_time")
# Keys of a typed message that are not sensor values.
_NOT_SENSORS = frozenset({"device_id", "timestamp", "ts", "tag", "msg_id", "seq"})


@dataclass(frozen=True, slots=True)
class TruthRow:
    """One window of one sensor.

    Attributes:
        sensor: the sensor name, as the server knows it.
        window_start_us: start of the window (inclusive), microseconds since the epoch.
        window_end_us: end of the window (exclusive).
        count: distinct readings delivered whose event time is in the window.
        late: how many of them were held back past the allowed lateness.
    """

    sensor: str
    window_start_us: int
    window_end_us: int
    count: int
    late: int

    @property
    def on_time(self) -> int:
        """The readings the server's window should hold: ``count - late``."""
        return self.count - self.late


class GroundTruth:
    """Distinct readings per (sensor, event-time window), and how many were sent late.

    Args:
        window_s: the window size in seconds; windows are aligned to the Unix epoch.

    Example:
        >>> truth = GroundTruth(10.0)
        >>> truth.add({"device_id": "t-1", "timestamp": "2023-03-28T20:04:22.500Z", "temperature": 21.5})
        >>> truth.add({"device_id": "h-1", "type": "heartbeat", "ts": "2023-03-28T20:04:29.999Z",
        ...            "event": {"cpu_usage": 7.0, "mem_usage": 20.0}}, late=True)
        >>> [(r.sensor, us_to_iso(r.window_start_us), r.count, r.late) for r in truth.rows()]
        [('cpu_usage', '2023-03-28T20:04:20Z', 1, 1), ('mem_usage', '2023-03-28T20:04:20Z', 1, 1), \
('temperature', '2023-03-28T20:04:20Z', 1, 0)]
    """

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_us = round(window_s * 1_000_000)
        if self.window_us < 1000:
            msg = f"the truth window must be at least 1 ms, got {window_s} s"
            raise ConfigError(msg)
        self.messages = 0
        self.readings = 0
        self.late_readings = 0
        self._counts: dict[tuple[str, int], list[int]] = {}
        self._seconds: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM:SS" → its microseconds

    def add(self, message: Message, *, late: bool = False) -> None:
        """Count one delivered message (its first acknowledged copy only) and its readings."""
        self.messages += 1
        event = message.get("event")
        if event is not None:
            sensors = list(event)
        elif "sensor" in message:  # a canonical reading (trackers, a host's fan and voltage)
            sensors = [message["sensor"]]
        else:
            sensors = [
                k
                for k, v in message.items()
                if k not in _NOT_SENSORS and isinstance(v, int | float) and not isinstance(v, bool)
            ]
        if not sensors:  # a startup: an event of the device, no reading
            return
        ts = self._event_time(message.get("timestamp") or message["ts"])
        start = ts - ts % self.window_us
        counts = self._counts
        for sensor in sensors:
            cell = counts.get((sensor, start))
            if cell is None:
                cell = counts[sensor, start] = [0, 0]
            cell[0] += 1
            if late:
                cell[1] += 1
        self.readings += len(sensors)
        if late:
            self.late_readings += len(sensors)

    def rows(self) -> list[TruthRow]:
        """Every window with a reading, by window start, then sensor."""
        w = self.window_us
        return [
            TruthRow(sensor, start, start + w, count, late)
            for (sensor, start), (count, late) in sorted(self._counts.items(), key=lambda kv: kv[0][::-1])
        ]

    def document(self, meta: Mapping[str, Any], *, complete: bool) -> dict[str, Any]:
        """The JSON document: format, ``complete``, window size, ``meta``, totals and windows."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "complete": complete,
            "window_s": self.window_us / 1_000_000,
            **meta,
            "totals": {
                "messages": self.messages,
                "readings": self.readings,
                "late_readings": self.late_readings,
                "on_time_readings": self.readings - self.late_readings,
            },
            "windows": [
                {
                    "sensor": r.sensor,
                    "window_start": us_to_iso(r.window_start_us),
                    "window_end": us_to_iso(r.window_end_us),
                    "count": r.count,
                    "late": r.late,
                    "on_time": r.on_time,
                }
                for r in self.rows()
            ],
        }

    def csv(self) -> str:
        """The windows as CSV with a header row (:data:`CSV_COLUMNS`)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in self.rows():
            start, end = us_to_iso(r.window_start_us), us_to_iso(r.window_end_us)
            writer.writerow((r.sensor, start, end, r.count, r.late, r.on_time))
        return out.getvalue()

    def _event_time(self, text: str) -> int:
        # The simulator's own form, "2023-03-28T20:04:22.123Z", parsing each second once (with
        # skewed clocks nearly every message's text differs); anything else the long way.
        if len(text) != 24 or text[19] != "." or text[23] != "Z" or not text[20:23].isdigit():
            return parse_time(text)
        second = text[:19]
        us = self._seconds.get(second)
        if us is None:
            if len(self._seconds) > 1000:
                self._seconds.clear()
            us = self._seconds[second] = parse_time(second + "Z")
        return us + int(text[20:23]) * 1000


def write_truth(path: Path, truth: GroundTruth, meta: Mapping[str, Any], *, complete: bool) -> None:
    """Write the truth to ``path``: CSV when it ends in ``.csv``, else JSON.

    The file is replaced whole (written aside, then renamed), so a reader
    never sees half a file, even while a run rewrites it periodically.

    Raises:
        OSError: the file cannot be written.
    """
    if path.suffix.lower() == ".csv":
        text = truth.csv()
    else:
        text = json.dumps(truth.document(meta, complete=complete), indent=2) + "\n"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
