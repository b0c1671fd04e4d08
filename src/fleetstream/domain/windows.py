"""Tumbling event-time windows with a watermark, allowed lateness and quantile sketches.

What a window is
    Windows are tumbling and aligned to the Unix epoch: a window of size ``S``
    covers event times ``[k*S, (k+1)*S)``. Every configured size (default 10 s
    and 1 min) is computed for each sensor over the whole fleet (device id
    ``"*"``, which no real device can have) and for each (device, sensor).
    A window holds count, sum, mean, sample standard deviation, min, max, the
    first and last value by event time (on equal event times the earlier
    arrival is ``first`` and the later arrival is ``last``) and a quantile
    sketch: p50, p95 and p99 are the *lower* rank quantiles (the value at
    index ``floor(q * (n - 1))`` of the sorted values) within 1% relative
    error by default. All times are integer microseconds since the epoch (UTC).

The watermark
    The watermark says "event time up to here is complete". It is computed
    reading by reading, in log order: before reading ``i`` it is
    ``max(previous watermark, max(clamped_ts[0..i-1]) - out_of_orderness)``
    where ``clamped_ts = min(ts, received_at + max_ahead)``: a device whose
    clock runs ahead cannot push the watermark past real time. Only the log
    decides it, so replaying the log after a crash, cut into other batches,
    gives the same windows.

On time, late, too late
    For a reading and a window ``[start, end)`` that holds it, with ``wm`` the
    watermark before that reading:

    - ``wm < end``: the window is open; the reading is added.
    - ``end <= wm < end + allowed_lateness``: the window was already emitted
      (or is due); the reading is added and the window is emitted again as a
      new ``version``.
    - ``wm >= end + allowed_lateness``: the reading is *late* for that window
      size. It is not added; it is reported in the output's ``late`` columns
      with ``late_by_us = wm - end`` (how far the watermark had passed the
      window's end, at least ``allowed_lateness``), once per size it is late
      for, and counted once per sensor in ``late_total`` (late for a bigger
      size implies late for the smallest).

Emission
    After each batch and each timer tick, every window with ``end <= wm`` that
    was not emitted yet, or changed since, is emitted once with ``version``
    1, 2, 3...; windows are ordered by end, size, sensor and device. A window
    with ``end + allowed_lateness <= wm`` is final: it leaves memory and its
    last version stands. Empty windows are never emitted. The final contents
    of a window do not depend on how the log was cut into batches; the number
    of versions on the way may.

Idle partitions
    When no reading has arrived for ``idle_timeout`` of wall-clock time, the
    timer moves the watermark with the wall clock (``now - out_of_orderness``)
    so the last windows of a quiet partition still close. After a start or a
    restore the idle clock starts at the first timer tick. Readings that
    arrive after the clock moved the watermark are judged against it.

Restarts
    ``snapshot()`` holds the watermark, the late counts and every window still
    in memory (exact sums, sketches); a processor restored from it and fed the
    rest of the log emits what the uninterrupted one would have.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from fleetstream.domain.sketch import bucket_keys
from fleetstream.domain.window_records import (
    ALL_DEVICES,
    I64_MIN,
    LateReadings,
    WindowAggregate,
    WindowOutput,
    WindowSettings,
)
from fleetstream.domain.window_state import Packing
from fleetstream.domain.window_table import WindowTable

SNAPSHOT_FORMAT = 2
"""The layout :meth:`WindowProcessor.snapshot` writes; no other is read back."""

__all__ = [
    "ALL_DEVICES",
    "LateReadings",
    "WindowAggregate",
    "WindowOutput",
    "WindowProcessor",
    "WindowSettings",
]


class WindowProcessor:
    """Tumbling event-time windows of one partition (see the module docstring for the rules).

    State lives in numpy arrays, one slot per window (a
    :class:`~fleetstream.domain.window_table.WindowTable`); a batch is folded in
    with a few vectorised steps whatever its size, and Python work is done per
    window emitted, not per reading. This class decides the watermark and what
    is late.

    Example:
        >>> p = WindowProcessor(WindowSettings(sizes_us=(10,), out_of_orderness_us=0,
        ...                                    allowed_lateness_us=5, max_ahead_us=100))
        >>> out = p.on_batch(["d1"] * 3, ["t"] * 3, [1.0, 2.0, 3.0], [1, 4, 12], [1, 4, 12], [1, 2, 3], 12)
        >>> p.watermark, [(w.device_id, w.start, w.count, w.mean, w.version) for w in out.windows]
        (12, [('*', 0, 2, 1.5, 1), ('d1', 0, 2, 1.5, 1)])
        >>> out = p.on_batch(["d1"], ["t"], [9.0], [3], [13], [4], 13)  # within the lateness: version 2
        >>> [(w.device_id, w.count, w.version) for w in out.windows]
        [('*', 3, 2), ('d1', 3, 2)]
        >>> out = p.on_batch(["d1", "d1"], ["t", "t"], [5.0, 6.0], [20, 2], [20, 20], [5, 6], 20)
        >>> out.late.ts, out.late.late_by_us, p.late_total
        ([2], [10], {'t': 1})
    """

    def __init__(self, settings: WindowSettings) -> None:
        self.settings = settings
        self._sizes = settings.sizes_us
        self._packing = Packing.of(settings.relative_accuracy)
        self._wm: int | None = None
        self._last_input: int | None = None  # wall clock of the last batch with rows
        self.late_total: dict[str, int] = {}
        # The windows in memory, and a number per series: (device, sensor) and (ALL_DEVICES, sensor).
        self._table = WindowTable(self._sizes, self._packing)

    @property
    def watermark(self) -> int | None:
        """Event time up to which input is taken as complete; ``None`` before any."""
        return self._wm

    def on_batch(
        self,
        device_id: list[str],
        sensor: list[str],
        value: list[float],
        ts: list[int],
        received_at: list[int],
        seq: list[int],
        now_us: int,
    ) -> WindowOutput:
        """Fold in readings given as columns in log order; returns windows now due and late readings."""
        n = len(ts)
        if not len(device_id) == len(sensor) == len(value) == len(received_at) == len(seq) == n:
            msg = "on_batch columns must all have the same length"
            raise ValueError(msg)
        if n == 0:
            return WindowOutput()
        st, packing = self.settings, self._packing
        t = np.array(ts, np.int64)
        v = np.array(value, np.float64)
        buckets = bucket_keys(v, packing.alpha)  # checks the values before any state changes
        self._last_input = now_us
        clamped = np.minimum(t, np.array(received_at, np.int64) + st.max_ahead_us)
        run = np.maximum.accumulate(clamped) - st.out_of_orderness_us
        before = I64_MIN if self._wm is None else self._wm
        wm = np.empty(n, np.int64)  # the watermark before each row
        wm[0] = before
        np.maximum(run[:-1], before, out=wm[1:])
        self._wm = max(before, int(run[-1]))
        table = self._table
        device = table.series.numbers(device_id, sensor)
        fleet = table.series.fleet_of[device]
        ns = len(self._sizes)
        lines: list[np.ndarray] = []
        us: list[np.ndarray] = []
        rows: list[np.ndarray] = []
        late: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        blocks: list[tuple[int, int, np.ndarray]] = []  # size index, offset, window numbers of its rows
        offset = 0
        for j, size in enumerate(self._sizes):
            u = t // size
            end = (u + 1) * size
            taken = wm < end + st.allowed_lateness_us
            if taken.all():
                idx = np.arange(n)
            else:
                missed = np.flatnonzero(~taken)
                late.append((j, missed, end[missed], wm[missed]))
                idx = np.flatnonzero(taken)
                u = u[idx]
            if len(idx) == 0:
                continue
            lines += [device[idx] * ns + j, fleet[idx] * ns + j]
            us += [u, u]
            rows += [idx, idx]
            blocks.append((j, offset, u))
            offset += 2 * len(idx)
        output = WindowOutput(late=self._late(late, device_id, sensor, t, v, seq, received_at))
        if blocks:
            row = np.concatenate(rows)
            slot = table.slots_for(np.concatenate(lines), np.concatenate(us), v[row])
            table.fold(slot, v[row], t[row])
            table.feed_sketches(blocks, slot * packing.span + (buckets[row] + packing.max_key))
        output.windows = self._emit()
        return output

    def on_timer(self, now_us: int) -> WindowOutput:
        """Wall-clock tick: once input has been idle for ``idle_timeout``, the watermark follows the clock."""
        if self._last_input is None:
            self._last_input = now_us
            return WindowOutput()
        if now_us - self._last_input < self.settings.idle_timeout_us:
            return WindowOutput()
        target = now_us - self.settings.out_of_orderness_us
        if self._wm is None or target > self._wm:
            self._wm = target
        return WindowOutput(self._emit())

    def open_windows(self) -> list[WindowAggregate]:
        """Copies of the windows in memory (in progress or within the lateness), in emission order.

        ``version`` is that of the last emission (0: not emitted yet).
        """
        return self._table.open_windows()

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as builtins for msgpack (arrays as ``bytes``: not JSON).

        Raw array bytes rather than an object per window: a checkpoint of a few hundred
        thousand windows then takes milliseconds, not seconds, on the engine's event loop.
        """
        return {
            "format": SNAPSHOT_FORMAT,
            "sizes_us": list(self._sizes),
            "relative_accuracy": self._packing.alpha,
            "watermark": self._wm,
            "late_total": dict(self.late_total),
            **self._table.snapshot(),
        }

    @classmethod
    def restore(cls, settings: WindowSettings, state: dict[str, Any]) -> WindowProcessor:
        """A processor continuing from :meth:`snapshot` (same sizes and accuracy required).

        Raises:
            ValueError: the snapshot is of another format (the caller replays the log
                instead), or of other window sizes or accuracy.
        """
        if state.get("format") != SNAPSHOT_FORMAT:
            msg = (
                f"window snapshot format {state.get('format')!r} is not {SNAPSHOT_FORMAT}, "
                "the one this version reads: resume by replaying the log instead"
            )
            raise ValueError(msg)
        sizes, alpha = state["sizes_us"], state["relative_accuracy"]
        if sizes != list(settings.sizes_us) or alpha != settings.relative_accuracy:
            msg = (
                f"the snapshot has window sizes {sizes} and accuracy {alpha}, "
                f"the settings {list(settings.sizes_us)} and {settings.relative_accuracy}"
            )
            raise ValueError(msg)
        p = cls(settings)
        p._wm = state["watermark"]
        p.late_total = dict(state["late_total"])
        p._table.load(state)
        return p

    # ----------------------------------------------------------------- internals

    def _emit(self) -> list[WindowAggregate]:
        wm = self._wm
        if wm is None:
            return []
        return self._table.emit(wm, wm - self.settings.allowed_lateness_us)

    def _late(
        self,
        parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
        device_id: list[str],
        sensor: list[str],
        ts: np.ndarray,
        value: np.ndarray,
        seq: list[int],
        received_at: list[int],
    ) -> LateReadings:
        out = LateReadings()
        if not parts:
            return out
        if parts[0][0] == 0:  # late for the smallest size: counted once per reading
            for name, n in Counter(map(sensor.__getitem__, parts[0][1].tolist())).items():
                self.late_total[name] = self.late_total.get(name, 0) + n
        js = np.concatenate([np.full(len(p[1]), p[0], np.int64) for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        end = np.concatenate([p[2] for p in parts])
        wm = np.concatenate([p[3] for p in parts])
        order = np.lexsort((js, rows))  # by arrival, then size
        rows, js, end, wm = rows[order], js[order], end[order], wm[order]
        size = np.array(self._sizes, np.int64)[js]
        r = rows.tolist()
        out.device_id = [device_id[i] for i in r]
        out.sensor = [sensor[i] for i in r]
        out.ts = ts[rows].tolist()
        out.value = value[rows].tolist()
        out.seq = [seq[i] for i in r]
        out.received_at = [received_at[i] for i in r]
        out.size_us = size.tolist()
        out.window_start = (end - size).tolist()
        out.late_by_us = (wm - end).tolist()
        return out
