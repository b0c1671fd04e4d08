"""Folding a durable batch's messages into the twins, in log order.

:class:`TwinFold` applies each message with readings either on the hot path (an online twin,
one event time, no position fix or type change: item assignments only) or through every rule
(registration, type change, heartbeat, location and status events), firing the status timers
that come due between messages.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from fleetstream.domain.batch import Batch
from fleetstream.domain.events import (
    GENERIC_TYPE,
    HEARTBEAT,
    LOCATION_CHANGED,
    MESSAGE,
    NEVER,
    ONLINE,
    STARTUP,
    DeviceEvent,
)
from fleetstream.domain.records import DeviceMessage
from fleetstream.domain.twin_timers import TwinTimers

LATITUDE = "latitude"
LONGITUDE = "longitude"
_GEO = frozenset((LATITUDE, LONGITUDE))
_PLAIN, _BEAT, _GENERAL = 0, 1, 2  # how a message is applied (see TwinProcessor._paths)


class TwinFold(TwinTimers):
    """The message-folding steps of :class:`~fleetstream.domain.twin.TwinProcessor`."""

    def _rows(self, out: list[DeviceEvent], batch: Batch) -> None:
        n = len(batch)
        msg = np.array(batch.msg, np.int64)
        ts = np.array(batch.ts, np.int64)
        same = msg[1:] == msg[:-1]
        starts = np.concatenate((np.zeros(1, np.int64), np.flatnonzero(~same) + 1))
        arrival = np.minimum(ts, np.array(batch.received_at, np.int64) + self.settings.max_ahead_us)
        times = np.maximum.accumulate(np.maximum.reduceat(arrival, starts))
        if self._pt is not None:
            np.maximum(times, self._pt, out=times)
        pts: list[int] = times.tolist()
        bounds: list[int] = starts.tolist()
        bounds.append(n)
        paths = self._paths(batch, starts, bool(np.array_equal(ts[1:][same], ts[:-1][same])))
        timers = self._timers
        count = len(pts)
        m = 0
        while m < count:
            due = timers[0][0] if timers else None
            if due is not None and due < pts[m]:
                self._fire(out, pts[m])
                continue
            stop = count if due is None or due >= pts[-1] else bisect_right(pts, due, m)
            m = self._run(out, batch, pts, bounds, paths, m, stop, due)
        self._pt = pts[-1]

    @staticmethod
    def _paths(batch: Batch, starts: np.ndarray, uniform: bool) -> list[int]:
        """Per message: ``_PLAIN``, ``_BEAT`` (plain but for its heartbeat event) or ``_GENERAL``.

        Only a message with one event time and no position fix may take the hot path.
        """
        count = len(starts)
        if not uniform:
            return [_GENERAL] * count
        kinds, sensors = batch.kind, batch.sensor
        if HEARTBEAT not in set(kinds) and _GEO.isdisjoint(sensors):  # building a set beats searching a list
            return [_PLAIN] * count
        paths = np.zeros(count, np.int8)
        beats = [i for i, k in enumerate(kinds) if k == HEARTBEAT]
        paths[np.searchsorted(starts, beats, "right") - 1] = _BEAT
        fixes = [i for i, s in enumerate(sensors) if s in _GEO]
        paths[np.searchsorted(starts, fixes, "right") - 1] = _GENERAL
        out: list[int] = paths.tolist()
        return out

    def _run(
        self,
        out: list[DeviceEvent],
        batch: Batch,
        pts: list[int],
        bounds: list[int],
        paths: list[int],
        lo: int,
        hi: int,
        due: int | None,
    ) -> int:
        """Apply messages ``lo`` .. ``hi - 1`` (no timer is due among them); returns where it stopped.

        It stops early when a message arms a timer earlier than ``due``: the caller
        then finds the new end of the segment.
        """
        get = self._twins.get
        devices, ts, seq, sensors = batch.device_id, batch.ts, batch.seq, batch.sensor
        values, types = batch.value, batch.device_type
        timers = self._timers
        for m in range(lo, hi):
            a = bounds[m]
            device = devices[a]
            twin = get(device)
            path = paths[m]
            if (
                twin is not None
                and path != _GENERAL
                and twin.status == ONLINE
                and seq[a] > twin.position
                and (twin.device_type != GENERIC_TYPE or types[a] == GENERIC_TYPE)
            ):
                # The status stands: an online twin's timer is at most last_seen + idle_after,
                # no timer is due by this message's partition time, and last_seen only grows.
                b = bounds[m + 1]
                t = ts[a]
                table = twin.sensors
                if b == a + 1 and path == _PLAIN:  # the most common message: one reading
                    sensor = sensors[a]
                    if t >= twin.last_seen:
                        twin.last_seen = t
                        table[sensor] = (values[a], t)
                    else:
                        old = table.get(sensor)
                        if old is None or t >= old[1]:
                            table[sensor] = (values[a], t)
                    twin.messages += 1
                    twin.readings += 1
                    twin.position = seq[a]
                    continue
                if t >= twin.last_seen:
                    # Newer than all it sent: every row wins. (A loop of item assignments
                    # beats dict.update(zip(slice, slice)) for 3-4 rows.)
                    for i in range(a, b):
                        table[sensors[i]] = (values[i], t)
                    twin.last_seen = t
                else:
                    # Older than its last message (clock jitter, late delivery): a row wins only
                    # over a value at most as new; last_seen stays.
                    for i in range(a, b):
                        old = table.get(sensors[i])
                        if old is None or t >= old[1]:
                            table[sensors[i]] = (values[i], t)
                twin.messages += 1
                twin.readings += b - a
                twin.position = seq[b - 1]
                if path == _BEAT:
                    payload = {sensors[i]: values[i] for i in range(a, b)}
                    self._emit(out, twin, HEARTBEAT, t, payload, seq[a])
                continue
            self._row_message(out, batch, a, bounds[m + 1], pts[m])
            if timers and (due is None or timers[0][0] < due):
                self._position = seq[bounds[m + 1] - 1]
                return m + 1
        self._position = seq[bounds[hi] - 1]
        return hi

    def _row_message(self, out: list[DeviceEvent], batch: Batch, a: int, b: int, pt: int) -> None:
        """One message with readings, every rule applied (the general path)."""
        device, ts, seq = batch.device_id[a], batch.ts, batch.seq
        t = max(ts[a:b])
        twin = self._twins.get(device)
        new = twin is None
        if twin is None:
            twin = self._register(out, device, batch.device_type[a], t, seq[a])
        elif seq[a] <= twin.position:
            return  # applied before a crash: replaying the log changes nothing
        sensors, values = batch.sensor, batch.value
        for i in range(a, b):
            twin.observe_row(seq[i], ts[i], sensors[i], values[i], first_of_message=i == a)
        self._retype(out, twin, batch.device_type[a], t, seq[a])
        if batch.kind[a] == HEARTBEAT:
            self._emit(out, twin, HEARTBEAT, t, {sensors[i]: values[i] for i in range(a, b)}, seq[a])
        lat = lon = None
        fix = NEVER
        for i in range(a, b):
            if sensors[i] == LATITUDE:
                lat, fix = values[i], max(fix, ts[i])
            elif sensors[i] == LONGITUDE:
                lon, fix = values[i], max(fix, ts[i])
        if lat is not None and lon is not None:
            here = twin.location
            if here is None or (fix > here[2] and (lat, lon) != here[:2]):
                self._emit(out, twin, LOCATION_CHANGED, fix, {"lat": lat, "lon": lon}, seq[a])
        self._restatus(out, twin, t, seq[a], pt, new)

    def _bare_message(self, out: list[DeviceEvent], message: DeviceMessage, pt: int) -> None:
        """A message without readings (``startup``): its event is its only trace in the twin."""
        twin = self._twins.get(message.device_id)
        new = twin is None
        if twin is None:
            twin = self._register(out, message.device_id, message.device_type, message.ts, message.seq)
        elif message.seq <= twin.position:
            return
        self._retype(out, twin, message.device_type, message.ts, message.seq)
        if message.kind == STARTUP:
            self._emit(out, twin, STARTUP, message.ts, {}, message.seq)
        else:
            self._emit(out, twin, MESSAGE, message.ts, {"kind": message.kind}, message.seq)
        self._restatus(out, twin, message.ts, message.seq, pt, new)
