"""The windows of a :class:`~fleetstream.domain.windows.WindowProcessor` in memory.

Internal to the processor. A window's aggregates live in :class:`WindowSlots`,
parallel numpy arrays with one slot per window, so a batch is folded in with a
few vectorised steps. Its quantile sketch lives in the :class:`WindowGroup` of
its size and start, shared by every series: (slot, bucket key) pairs packed
into int64 as :class:`Packing` says. A snapshot keeps these arrays as raw bytes
(:func:`array_state`), not one object per window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetstream.domain.sketch import QuantileSketch, max_bucket_key, merge_bucket_lists
from fleetstream.domain.window_records import I64_MAX, I64_MIN

_EMPTY = np.zeros(0, np.int64)


class WindowGroup:
    """The windows of one size and start, across series: they all fall due at the same watermark.

    Their sketches are one column of (slot, bucket key) pairs packed into int64,
    sorted and counted now and then, not one sketch object per window updated
    reading by reading; a window's sketch is a slice of it.
    """

    __slots__ = ("_keys", "counts", "dirty", "emitted", "end", "j", "packed", "pending", "raw")

    def __init__(self, j: int, end: int, *, emitted: bool = False) -> None:
        self.j = j  # size index
        self.end = end
        self.emitted = emitted
        self.dirty = False  # a window changed after the group was emitted
        self.raw: list[np.ndarray] = []  # packed pairs, one per reading
        self.pending = 0
        self.packed = _EMPTY  # packed pairs, sorted and unique, with their counts
        self.counts = _EMPTY
        self._keys: np.ndarray | None = None

    def add(self, packed: np.ndarray) -> None:
        """Pairs of one batch, one per reading (sorted and counted later)."""
        self.raw.append(packed)
        self.pending += len(packed)
        if self.pending > max(1 << 16, len(self.packed)):  # bounded memory, amortised cost
            self.compact()

    def compact(self) -> None:
        """Fold the pending pairs into the sorted, counted ones."""
        if self.raw:
            raw = np.sort(np.concatenate(self.raw))
            starts = np.flatnonzero(np.concatenate(([True], raw[1:] != raw[:-1])))
            counts = np.diff(np.append(starts, len(raw)))
            self.packed, self.counts = merge_bucket_lists(self.packed, self.counts, raw[starts], counts)
            self.raw, self.pending, self._keys = [], 0, None

    def to_state(self, renumber: np.ndarray, span: int) -> dict[str, Any]:
        """The group as builtins, slot ``s`` of its pairs as ``renumber[s]`` (which must keep their order)."""
        self.compact()
        slot = self.packed // span
        packed = renumber[slot] * span + (self.packed - slot * span)
        return {
            "j": self.j, "end": self.end, "emitted": self.emitted, "dirty": self.dirty,
            "packed": array_state(packed), "counts": array_state(self.counts),
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WindowGroup:
        """The group :meth:`to_state` described."""
        group = cls(state["j"], state["end"], emitted=state["emitted"])
        group.dirty = state["dirty"]
        group.packed = array_from_state(state["packed"], np.int64)
        group.counts = array_from_state(state["counts"], np.int64)
        return group

    def sketches(self, slots: np.ndarray, totals: np.ndarray, packing: Packing) -> list[QuantileSketch]:
        """The sketch of each given slot of this group: slices of the group's arrays, nothing copied."""
        self.compact()
        span = packing.span
        if self._keys is None:
            self._keys = self.packed - self.packed // span * span - packing.max_key
        keys, counts = self._keys, self.counts
        lo = np.searchsorted(self.packed, slots * span).tolist()
        hi = np.searchsorted(self.packed, (slots + 1) * span).tolist()
        make, alpha = QuantileSketch.from_sorted_buckets, packing.alpha
        return [
            make(keys[a:b], counts[a:b], alpha, n) for a, b, n in zip(lo, hi, totals.tolist(), strict=True)
        ]


@dataclass(frozen=True, slots=True)
class Packing:
    """(slot, bucket key) in one int64: ``slot * span + key + max_key``."""

    alpha: float
    max_key: int
    span: int

    @classmethod
    def of(cls, alpha: float) -> Packing:
        """The packing for sketches of relative accuracy ``alpha``."""
        max_key = max_bucket_key(alpha)
        return cls(alpha, max_key, 2 * max_key + 1)


SLOT_FIELDS: tuple[tuple[str, type, float | int | bool], ...] = (
    ("count", np.int64, 0),
    ("shift", np.float64, 0.0),  # the window's first value: sums of (value - shift) keep the variance exact
    ("s1", np.float64, 0.0),
    ("s2", np.float64, 0.0),
    ("min", np.float64, math.inf),
    ("max", np.float64, -math.inf),
    ("first", np.float64, math.nan),
    ("first_ts", np.int64, I64_MAX),
    ("last", np.float64, math.nan),
    ("last_ts", np.int64, I64_MIN),
    ("start", np.int64, 0),
    ("end", np.int64, I64_MAX),  # I64_MAX marks a free slot
    ("line", np.int64, 0),
    ("version", np.int64, 0),
    ("changed", np.bool_, False),
    ("pick", np.int64, 0),  # scratch for choosing first/last among a batch's readings
)
# The columns of a window a snapshot keeps; its end follows from start and line, pick is scratch.
STATE_FIELDS: tuple[tuple[str, type], ...] = tuple(
    (name, dtype) for name, dtype, _ in SLOT_FIELDS if name not in ("end", "pick")
)


def array_state(array: np.ndarray) -> dict[str, Any]:
    """A 1-D array as builtins: dtype (byte order included), length and the raw bytes.

    Example:
        >>> state = array_state(np.array([1, -2], np.dtype("<i8")))
        >>> state["dtype"], state["shape"], len(state["data"])
        ('<i8', [2], 16)
        >>> array_from_state(state, np.int64).tolist()
        [1, -2]
    """
    return {"dtype": array.dtype.str, "shape": list(array.shape), "data": array.tobytes()}


def array_from_state(state: dict[str, Any], dtype: type) -> np.ndarray:
    """A writable, native-order copy of the array :func:`array_state` described, which must be of ``dtype``.

    Raises:
        ValueError: the state holds another dtype, or its bytes do not match its shape.
    """
    stored = np.dtype(state["dtype"])
    if stored.newbyteorder("=") != np.dtype(dtype):
        msg = f"expected an array of {np.dtype(dtype)}, the snapshot has {stored}"
        raise ValueError(msg)
    shape = tuple(state["shape"])
    data = state["data"]
    if len(data) != math.prod(shape) * stored.itemsize:
        msg = f"{len(data)} bytes cannot hold a {stored} array of shape {list(shape)}"
        raise ValueError(msg)
    # astype copies: frombuffer's view of the bytes is read-only, and may be of the other byte order
    return np.frombuffer(data, stored).reshape(shape).astype(dtype)


class WindowSlots:
    """Windows in memory as parallel numpy arrays, one slot per window; freed slots are reused."""

    count: np.ndarray
    shift: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    min: np.ndarray
    max: np.ndarray
    first: np.ndarray
    first_ts: np.ndarray
    last: np.ndarray
    last_ts: np.ndarray
    start: np.ndarray
    end: np.ndarray
    line: np.ndarray
    version: np.ndarray
    changed: np.ndarray
    pick: np.ndarray

    def __init__(self, capacity: int = 1024) -> None:
        for name, dtype, fill in SLOT_FIELDS:
            setattr(self, name, np.full(capacity, fill, dtype))
        self.used = 0  # slots 0 .. used-1 have been handed out at least once
        self.free: list[int] = []
        self.key: list[int] = [0] * capacity  # the window key of each slot in use

    def take(self, k: int) -> list[int]:
        """``k`` free slots, freed ones first; the arrays grow when none are left."""
        reused = self.free[len(self.free) - min(k, len(self.free)) :]
        del self.free[len(self.free) - len(reused) :]
        fresh = k - len(reused)
        capacity = len(self.end)
        if self.used + fresh > capacity:
            size = max(self.used + fresh, 2 * capacity)
            for name, dtype, fill in SLOT_FIELDS:
                grown: np.ndarray = np.full(size, fill, dtype)
                grown[:capacity] = getattr(self, name)
                setattr(self, name, grown)
            self.key += [0] * (size - capacity)
        self.used += fresh
        return reused + list(range(self.used - fresh, self.used))

    def alive(self) -> np.ndarray:
        """The slots holding a window."""
        return np.flatnonzero(self.end[: self.used] != I64_MAX)

    def release(self, slots: np.ndarray) -> None:
        """Free the given slots, back to their empty values."""
        for name, _, fill in SLOT_FIELDS:
            getattr(self, name)[slots] = fill
        self.free += slots.tolist()
