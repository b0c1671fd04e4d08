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

This module holds the processor's face (the stream, residency, shadows and
checkpoints); the folding of messages is in :mod:`~fleetstream.domain.twin_fold`,
the twins' state, events and status timers in :mod:`~fleetstream.domain.twin_timers`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from heapq import heappush
from typing import Any

from fleetstream.domain.batch import Batch
from fleetstream.domain.events import (
    SHADOW_EVENTS,
    DeviceEvent,
    DeviceTwin,
)
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
from fleetstream.domain.twin_fold import TwinFold
from fleetstream.domain.twin_timers import TwinSettings

__all__ = ["DeviceEvent", "DeviceTwin", "TwinProcessor", "TwinSettings"]

SNAPSHOT_FORMAT = 1


class TwinProcessor(TwinFold):
    """The twins of one partition: feed it batches in log order, collect the events it emits.

    Example:
        >>> from fleetstream.domain.records import DeviceMessage, Reading
        >>> batch = Batch.from_messages([DeviceMessage("d", 1, "telemetry", "Thermostat",
        ...     [Reading("d", 1, "temperature", 21.5)], received_at=1, seq=1)])
        >>> p = TwinProcessor(TwinSettings())
        >>> [(e.seq, e.type) for e in p.on_batch(batch, now_us=1)]
        [(1, 'registered'), (2, 'status_changed')]
        >>> p.get("d").sensors, p.get("d").status
        ({'temperature': (21.5, 1)}, 'online')
    """

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
