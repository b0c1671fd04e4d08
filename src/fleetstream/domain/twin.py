"""Digital twins of one partition's devices, kept by folding the log into events.

:class:`TwinProcessor` reads each durable batch in log order (its rows, then
its reading-less messages) and emits :class:`~fleetstream.domain.events.DeviceEvent`
objects, each applied to its :class:`~fleetstream.domain.events.DeviceTwin`
as it is emitted: ``registered`` the first time a device is seen,
``type_changed`` when a generic ``Sensor`` turns out to be of a specific type,
``startup`` (and ``message`` for other reading-less kinds), ``heartbeat`` per
heartbeat message, ``location_changed`` for a newer fix at another position,
and ``status_changed`` as devices fall silent and speak again.

Silence is measured in event time, so results do not depend on how the log is
cut into batches, nor on when it is replayed. The partition time after a
message is the running maximum of ``min(ts, received_at + max_ahead)`` over
the messages so far (a device whose clock runs ahead cannot push everyone
else's timers). A device is ``online`` while ``partition time <= last_seen +
idle_after``, ``idle`` until ``last_seen + offline_after``, then ``offline``;
so a message brings a silent device back only if its event time is recent
(a late reading is folded into the sensors but leaves the status alone, and a
device whose clock lags by more than ``idle_after`` reads as idle). A timer
fires just before the first message that takes the partition time past its
deadline, and its event carries the deadline as its time. Timers sit in a heap
with lazy deletion: a row only moves ``last_seen``; a timer found
stale when it comes due is pushed back to the twin's current deadline.

When no record arrives for ``idle_timeout`` of wall time, :meth:`TwinProcessor.on_timer`
lets the wall clock stand in for the partition time (the one non-replayable
input), and evicts twins offline for ``evict_after``; the engine stores them
and hands them back through :meth:`TwinProcessor.load` before their next record.

The hot path (an online twin, no position fix or type change in the message)
costs an item assignment per row (and the event of a heartbeat), plus a look at
the value it would replace when the message is older than the device's last
one (a third of them, with a clock jitter of a few seconds); the partition
time of every message is computed with numpy for the whole batch.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any

import numpy as np

from fleetstream.domain.batch import Batch
from fleetstream.domain.events import (
    GENERIC_TYPE,
    HEARTBEAT,
    IDLE,
    LOCATION_CHANGED,
    MESSAGE,
    NEVER,
    OFFLINE,
    ONLINE,
    REGISTERED,
    SHADOW_EVENTS,
    STARTUP,
    STATUS_CHANGED,
    TYPE_CHANGED,
    DeviceEvent,
    DeviceTwin,
)
from fleetstream.domain.records import DeviceMessage
from fleetstream.domain.shadow import (
    DESIRED,
    SECTIONS,
    VersionMismatch,
    check_document,
    check_patch,
    copy_json,
    merge,
    same,
)

__all__ = ["DeviceEvent", "DeviceTwin", "TwinProcessor", "TwinSettings"]

LATITUDE = "latitude"
LONGITUDE = "longitude"
_GEO = frozenset((LATITUDE, LONGITUDE))
_PLAIN, _BEAT, _GENERAL = 0, 1, 2  # how a message is applied (see TwinProcessor._paths)
_S = 1_000_000
SNAPSHOT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class TwinSettings:
    """How long silence lasts before a status changes, and when twins leave memory (all µs).

    Example:
        >>> TwinSettings(idle_after_us=60_000_000).offline_after_us
        120000000
        >>> TwinSettings(idle_after_us=5, offline_after_us=3, evict_after_us=10)
        Traceback (most recent call last):
        ValueError: twin settings: idle_after < offline_after <= evict_after must hold, got 5, 3, 10
    """

    idle_after_us: int = 30 * _S
    offline_after_us: int = 120 * _S
    evict_after_us: int = 600 * _S
    idle_timeout_us: int = 10 * _S
    max_ahead_us: int = 5 * _S

    def __post_init__(self) -> None:
        if not 0 < self.idle_after_us < self.offline_after_us <= self.evict_after_us:
            msg = (
                "twin settings: idle_after < offline_after <= evict_after must hold, got "
                f"{self.idle_after_us}, {self.offline_after_us}, {self.evict_after_us}"
            )
            raise ValueError(msg)
        if self.idle_timeout_us <= 0 or self.max_ahead_us < 0:
            msg = "twin settings: idle_timeout must be positive and max_ahead not negative"
            raise ValueError(msg)


class TwinProcessor:
    """The twins of one partition: feed it batches in log order, collect the events it emits.

    Example:
        >>> from fleetstream.domain.records import Reading
        >>> batch = Batch.from_messages([DeviceMessage("d", 1, "telemetry", "Thermostat",
        ...     [Reading("d", 1, "temperature", 21.5)], received_at=1, seq=1)])
        >>> p = TwinProcessor(TwinSettings())
        >>> [(e.seq, e.type) for e in p.on_batch(batch, now_us=1)]
        [(1, 'registered'), (2, 'status_changed')]
        >>> p.get("d").sensors, p.get("d").status
        ({'temperature': (21.5, 1)}, 'online')
    """

    def __init__(self, settings: TwinSettings) -> None:
        self.settings = settings
        self._twins: dict[str, DeviceTwin] = {}
        self._absent: set[str] = set()  # known, stored, not in memory
        self._timers: list[tuple[int, str]] = []  # (deadline, device): status timers
        self._evictions: list[tuple[int, str]] = []  # (time to leave memory, device)
        self._dirty: set[str] = set()
        self._pt: int | None = None
        self._position = 0  # log position of the last record processed
        self._heard_at: int | None = None  # wall time a record last arrived
        self._registered: set[str] = set()  # devices first seen since the last take_registered()

    # -- the stream --------------------------------------------------------------------------

    def on_batch(self, batch: Batch, now_us: int) -> list[DeviceEvent]:
        """Process a durable batch: its rows, then its reading-less messages, in log order.

        Raises:
            ValueError: The rows carry no log positions, or a twin known to be stored was not loaded.
        """
        out: list[DeviceEvent] = []
        if batch.records:
            self._heard_at = now_us
        if len(batch):
            if len(batch.seq) != len(batch) or len(batch.msg) != len(batch):
                msg = "a batch reaches the twins once durable: each row needs its log position and message"
                raise ValueError(msg)
            # Every device of the batch changes (hot-path messages do not mark theirs one by one).
            self._dirty.update(batch.device_id)
            self._rows(out, batch)
        ahead = self.settings.max_ahead_us
        for message in batch.events:
            arrival = min(message.ts, message.received_at + ahead)
            pt = self._pt = arrival if self._pt is None or arrival > self._pt else self._pt
            self._fire(out, pt)
            self._bare_message(out, message, pt)
            self._position = message.seq
        return out

    def on_timer(self, now_us: int) -> tuple[list[DeviceEvent], list[DeviceTwin]]:
        """Let wall time stand in for a silent partition; evict long-offline twins.

        Returns the events of timers that came due and the twins that left memory (to be stored).
        The first call after construction or restore only notes the time.
        """
        out: list[DeviceEvent] = []
        if self._heard_at is None:
            self._heard_at = now_us
            return out, []
        if self._pt is None:
            return out, []
        if now_us - self._heard_at >= self.settings.idle_timeout_us and now_us > self._pt:
            self._pt = now_us
            self._fire(out, now_us)
        return out, self._evict(self._pt)

    # -- residency ---------------------------------------------------------------------------

    def missing(self, device_ids: Iterable[str]) -> set[str]:
        """The devices among ``device_ids`` whose stored twin must be loaded before their next record."""
        if not self._absent:
            return set()
        return self._absent.intersection(device_ids)

    def load(self, twins: Iterable[DeviceTwin]) -> None:
        """Put stored twins back in memory (timers re-armed from their state)."""
        for twin in twins:
            twin.timer = None
            self._twins[twin.device_id] = twin
            self._absent.discard(twin.device_id)
            self._arm(twin)

    def mark_dirty(self, device_ids: Iterable[str]) -> None:
        """Count these twins as changed again (their storing failed)."""
        self._dirty.update(device_ids)

    def take_dirty(self) -> list[DeviceTwin]:
        """Resident twins changed since the last call (to store beside a checkpoint)."""
        twins = self._twins
        changed = [twins[d] for d in sorted(self._dirty) if d in twins]
        self._dirty.clear()
        return changed

    def append(
        self, device_id: str, kind: str, ts: int, payload: dict[str, Any], position: int
    ) -> DeviceEvent | None:
        """Append an event another processor made (an alert, a zone crossing) to a resident twin.

        It takes the twin's next sequence number, so it sits in the device's history with the
        twin's own events; ``None`` when the twin is not in memory (not seen yet, or evicted).
        """
        twin = self._twins.get(device_id)
        if twin is None:
            return None
        out: list[DeviceEvent] = []
        self._emit(out, twin, kind, ts, payload, position)
        return out[0]

    def take_registered(self) -> set[str]:
        """Devices first seen since the last call (a checkpoint taken now knows all the others)."""
        taken, self._registered = self._registered, set()
        return taken

    def put_back_registered(self, device_ids: Iterable[str]) -> None:
        """Undo :meth:`take_registered` (the checkpoint it was for was not stored)."""
        self._registered.update(device_ids)

    def registered_since(self, device_id: str) -> bool:
        """Whether the device was first seen since the last :meth:`take_registered`."""
        return device_id in self._registered

    def get(self, device_id: str) -> DeviceTwin | None:
        """The twin of a device, if it is in memory."""
        return self._twins.get(device_id)

    def twins(self) -> Iterator[DeviceTwin]:
        """The twins in memory."""
        return iter(self._twins.values())

    def __len__(self) -> int:
        """Twins in memory."""
        return len(self._twins)

    def update_shadow(
        self, device_id: str, section: str, patch: object, now_us: int, if_match: int | None = None
    ) -> DeviceEvent | None:
        """Merge-patch the ``desired`` or ``reported`` document of a resident twin at wall time ``now_us``.

        Returns the ``desired_changed`` / ``reported_changed`` event (already applied), or ``None``
        when the patch leaves the document as it is (nothing is recorded).

        Raises:
            ShadowError: The patch is not an object, or it or the result is over the limits.
            VersionMismatch: ``if_match`` is not the section's current version.
            KeyError: The twin is not in memory (load it first).
        """
        if section not in SECTIONS:
            msg = f"no shadow section {section!r}"
            raise ValueError(msg)
        twin = self._twins[device_id]
        checked = check_patch(patch)
        current = twin.desired_version if section == DESIRED else twin.reported_version
        if if_match is not None and if_match != current:
            raise VersionMismatch(if_match, current)
        document = twin.desired if section == DESIRED else twin.reported
        merged = merge(document, checked)
        if same(merged, document):
            return None
        check_document(merged)
        kind = next(k for k, v in SHADOW_EVENTS.items() if v == section)
        out: list[DeviceEvent] = []
        self._emit(
            out, twin, kind, now_us, {"patch": copy_json(checked), "version": current + 1}, twin.position
        )
        return out[0]

    @property
    def partition_time(self) -> int | None:
        """Event time the partition has reached (``None`` before its first record)."""
        return self._pt

    # -- checkpoints -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Builtins only: timers, partition time, which twins are resident and which are stored away.

        The twins' own states are not in it: they are stored through :meth:`take_dirty`.
        """
        twins = self._twins
        timers = sorted(
            {(d, dev) for d, dev in self._timers if (t := twins.get(dev)) is not None and t.timer == d}
        )
        return {
            "format": SNAPSHOT_FORMAT,
            "partition_time": self._pt,
            "position": self._position,
            "timers": [[d, dev] for d, dev in timers],
            "resident": sorted(twins),
            "absent": sorted(self._absent),
        }

    @classmethod
    def restore(
        cls, settings: TwinSettings, state: dict[str, Any], twins: Iterable[DeviceTwin]
    ) -> TwinProcessor:
        """Resume from a :meth:`snapshot` and the stored twins it names as resident.

        A resident twin the store could not give back is treated as stored away
        (:meth:`missing` asks for it again before its next record).
        """
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = f"twin snapshot format {state.get('format')} is not {SNAPSHOT_FORMAT}"
            raise ValueError(msg)
        proc = cls(settings)
        proc._pt = state["partition_time"]
        proc._position = state["position"]
        proc._absent = set(state["absent"])
        given = {t.device_id: t for t in twins}
        proc._absent.update(d for d in state["resident"] if d not in given)
        for twin in given.values():
            twin.timer = None
            proc._twins[twin.device_id] = twin
            proc._absent.discard(twin.device_id)
        for deadline, device in state["timers"]:
            armed = given.get(device)
            current = None if armed is None else proc._deadline(armed)
            if armed is not None and current is not None and deadline <= current:
                armed.timer = deadline
                heappush(proc._timers, (deadline, device))
        for twin in given.values():
            proc._arm(twin)
        return proc

    # -- rows --------------------------------------------------------------------------------

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

    # -- events and timers -------------------------------------------------------------------

    def _emit(
        self, out: list[DeviceEvent], twin: DeviceTwin, kind: str, ts: int, payload: dict[str, Any], at: int
    ) -> None:
        event = DeviceEvent(twin.device_id, twin.version + 1, ts, kind, payload, at)
        twin.apply(event)
        out.append(event)
        self._dirty.add(twin.device_id)

    def _register(
        self, out: list[DeviceEvent], device: str, device_type: str, ts: int, at: int
    ) -> DeviceTwin:
        if device in self._absent:
            msg = f"the twin of {device!r} is stored: load it (see missing()) before its next record"
            raise ValueError(msg)
        twin = self._twins[device] = DeviceTwin(device)
        self._registered.add(device)
        self._emit(out, twin, REGISTERED, ts, {"device_type": device_type}, at)
        return twin

    def _retype(self, out: list[DeviceEvent], twin: DeviceTwin, device_type: str, ts: int, at: int) -> None:
        if twin.device_type == GENERIC_TYPE and device_type != GENERIC_TYPE:
            self._emit(out, twin, TYPE_CHANGED, ts, {"from": twin.device_type, "to": device_type}, at)

    def _status_at(self, last_seen: int, pt: int) -> str:
        if pt <= last_seen + self.settings.idle_after_us:
            return ONLINE
        if pt <= last_seen + self.settings.offline_after_us:
            return IDLE
        return OFFLINE

    def _deadline(self, twin: DeviceTwin) -> int | None:
        """When the twin's status lapses (``None`` once offline)."""
        if twin.status == ONLINE:
            return twin.last_seen + self.settings.idle_after_us
        if twin.status == IDLE:
            return twin.last_seen + self.settings.offline_after_us
        return None

    def _restatus(
        self, out: list[DeviceEvent], twin: DeviceTwin, ts: int, at: int, pt: int, new: bool
    ) -> None:
        """After a message: the status its event time gives (a late reading may not bring a twin back)."""
        status = self._status_at(twin.last_seen, pt)
        if status != twin.status:
            self._emit(out, twin, STATUS_CHANGED, ts, {"from": twin.status, "to": status}, at)
            self._arm(twin)
        elif new:
            self._arm(twin)

    def _arm(self, twin: DeviceTwin) -> None:
        """Make sure a timer is pending no later than the twin's deadline (or its eviction, once offline)."""
        deadline = self._deadline(twin)
        if deadline is None:
            heappush(self._evictions, (twin.last_seen + self.settings.evict_after_us, twin.device_id))
        elif twin.timer is None or deadline < twin.timer:
            twin.timer = deadline
            heappush(self._timers, (deadline, twin.device_id))

    def _fire(self, out: list[DeviceEvent], pt: int) -> None:
        """Fire every timer whose deadline the partition time ``pt`` has passed, in deadline order."""
        timers, twins = self._timers, self._twins
        while timers and timers[0][0] < pt:
            deadline, device = heappop(timers)
            twin = twins.get(device)
            if twin is None or twin.timer != deadline:
                continue  # superseded by an earlier timer, or the twin left memory
            twin.timer = None
            current = self._deadline(twin)
            if current is None:
                continue
            if current > deadline:  # it sent since: wait for the new deadline
                twin.timer = current
                heappush(timers, (current, device))
                continue
            status = IDLE if twin.status == ONLINE else OFFLINE
            self._emit(
                out, twin, STATUS_CHANGED, deadline, {"from": twin.status, "to": status}, self._position
            )
            self._arm(twin)

    def _evict(self, pt: int) -> list[DeviceTwin]:
        evictions, twins = self._evictions, self._twins
        evicted: list[DeviceTwin] = []
        while evictions and evictions[0][0] < pt:
            due, device = heappop(evictions)
            twin = twins.get(device)
            if twin is None or twin.status != OFFLINE:
                continue
            current = twin.last_seen + self.settings.evict_after_us
            if current > due:
                heappush(evictions, (current, device))
                continue
            del twins[device]
            self._absent.add(device)
            self._dirty.discard(device)
            evicted.append(twin)
        return evicted
