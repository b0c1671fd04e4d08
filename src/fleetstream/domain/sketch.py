"""Quantiles of a stream in bounded memory, with a guaranteed relative error, mergeable across workers.

:class:`QuantileSketch` is a DDSketch (Masson, Rim and Lee, VLDB 2019): a value
``x`` is counted in the bucket ``i = ceil(log_gamma(|x|))`` with
``gamma = (1 + alpha) / (1 - alpha)``, and a bucket answers with the one value
that is within ``alpha`` (relative) of everything it holds. Two sketches of the
same ``alpha`` merge by adding bucket counts, so merging is exact: the merge
of sketches equals the sketch of all the values.

Bucket keys are *sign-encoded*: one int64 per value, positive for positive
values, negative for negative ones and ``0`` for zero, ordered like the values
they stand for. One sorted list of (key, count) therefore holds negatives,
zero and positives in value order, and the window processor gets the keys of
a whole batch from :func:`bucket_keys` in one vectorised step.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, pairwise
from typing import Any

import numpy as np

_FLOAT_MAX_LOG = math.log(sys.float_info.max)
_EMPTY = np.zeros(0, np.int64)
_SMALL = 32  # buckets up to which quantiles and state are computed in plain Python
_EMPTY.flags.writeable = False


@dataclass(frozen=True, slots=True)
class _Mapping:
    """The value <-> key mapping of one relative accuracy."""

    alpha: float
    ln_gamma: float
    inv_ln_gamma: float
    min_indexable: float  # smaller magnitudes count as zero
    offset: int  # bucket index minus key: the smallest indexable bucket gets key 1
    ln_scale: float  # log(2 / (gamma + 1)): bucket index -> its representative value

    def value(self, key: int) -> float:
        """The representative value of a key: within ``alpha`` of anything counted under it."""
        if key == 0:
            return 0.0
        exponent = (abs(key) + self.offset) * self.ln_gamma + self.ln_scale
        magnitude = sys.float_info.max if exponent >= _FLOAT_MAX_LOG else math.exp(exponent)
        return magnitude if key > 0 else -magnitude


@lru_cache(maxsize=16)
def _mapping(alpha: float) -> _Mapping:
    if not 1e-9 <= alpha < 1.0:  # finer than 1e-9 and bucket keys outgrow int64
        msg = f"relative accuracy must be at least 1e-9 and below 1, got {alpha!r}"
        raise ValueError(msg)
    ln_gamma = math.log1p(2 * alpha / (1 - alpha))
    gamma = math.exp(ln_gamma)
    min_indexable = sys.float_info.min * gamma  # keeps every representative a normal float
    offset = math.ceil(math.log(min_indexable) / ln_gamma) - 1
    return _Mapping(alpha, ln_gamma, 1 / ln_gamma, min_indexable, offset, math.log(2 / (gamma + 1)))


def bucket_keys(values: np.ndarray, relative_accuracy: float = 0.01) -> np.ndarray:
    """The sign-encoded bucket key (int64) of each value of a float column.

    Values of magnitude below about ``2.3e-308`` (subnormals) share key 0 with zero.

    Example:
        >>> bucket_keys(np.array([-2.0, 0.0, 1.0, 1.01, 2.0])).tolist()
        [-35453, 0, 35418, 35419, 35453]

    Raises:
        ValueError: a value is NaN or infinite.
    """
    m = _mapping(relative_accuracy)
    v = np.asarray(values, np.float64)
    if not np.isfinite(v).all():
        msg = "a quantile sketch takes finite values only"
        raise ValueError(msg)
    magnitude = np.abs(v)
    keys = np.ceil(np.log(np.maximum(magnitude, m.min_indexable)) * m.inv_ln_gamma).astype(np.int64)
    keys -= m.offset
    keys[magnitude < m.min_indexable] = 0
    np.negative(keys, out=keys, where=v < 0)
    return keys


def max_bucket_key(relative_accuracy: float = 0.01) -> int:
    """The largest magnitude :func:`bucket_keys` can return (keys of the largest finite floats).

    Example:
        >>> max_bucket_key(0.01)
        70906
    """
    m = _mapping(relative_accuracy)
    return math.ceil(_FLOAT_MAX_LOG * m.inv_ln_gamma) - m.offset


def merge_bucket_lists(
    keys: np.ndarray, counts: np.ndarray, more_keys: np.ndarray, more_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two bucket lists (int64 keys sorted and unique, their counts) as one.

    A stable sort merges two sorted runs in linear time.

    Example:
        >>> k, c = merge_bucket_lists(np.array([1, 5]), np.array([2, 1]), np.array([5, 7]), np.array([1, 1]))
        >>> k.tolist(), c.tolist()
        ([1, 5, 7], [2, 2, 1])
    """
    if len(keys) == 0:
        return more_keys, more_counts
    k = np.concatenate((keys, more_keys))
    order = np.argsort(k, kind="stable")
    k = k[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    return k[starts], np.add.reduceat(np.concatenate((counts, more_counts))[order], starts)


class QuantileSketch:
    """Counts of values per logarithmic bucket; answers quantiles within a relative error.

    ``quantile(q)`` estimates the *lower* rank quantile: the value at index
    ``floor(q * (n - 1))`` of the sorted values (numpy's ``method="lower"``),
    and the answer ``a`` for a true value ``x`` satisfies
    ``|a - x| <= relative_accuracy * |x|``. Zero is answered exactly; values of
    magnitude below about ``2.3e-308`` count as zero.

    The buckets are two sorted int64 arrays (keys, counts) that are replaced,
    never changed in place, so sketches can share them.

    Example:
        >>> s = QuantileSketch(relative_accuracy=0.01)
        >>> for v in [-3.0, 0.0, 1.0, 2.0, 100.0]:
        ...     s.add(v)
        >>> s.count, [round(x, 2) for x in s.quantiles([0.0, 0.5, 1.0])]
        (5, [-2.97, 0.99, 100.49])
    """

    __slots__ = ("_count", "_counts", "_keys", "_map")

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        self._map = _mapping(relative_accuracy)
        self._keys = _EMPTY
        self._counts = _EMPTY
        self._count = 0

    @classmethod
    def from_sorted_buckets(
        cls, keys: np.ndarray, counts: np.ndarray, relative_accuracy: float = 0.01, total: int | None = None
    ) -> QuantileSketch:
        """A sketch over given int64 arrays, taken as they are: keys sorted and unique, counts positive.

        ``total`` is ``counts.sum()`` when the caller has it already. The arrays must not be changed later.
        """
        out = cls.__new__(cls)
        out._map = _mapping(relative_accuracy)
        out._keys = keys
        out._counts = counts
        out._count = int(counts.sum()) if total is None else total
        return out

    @classmethod
    def from_buckets(
        cls, keys: Iterable[int], counts: Iterable[int], relative_accuracy: float = 0.01
    ) -> QuantileSketch:
        """A sketch of bucket counts, keys as made by :func:`bucket_keys` (in any order, repeats summed)."""
        out = cls(relative_accuracy)
        out.add_buckets(keys, counts)
        return out

    @property
    def relative_accuracy(self) -> float:
        """The ``alpha`` the quantile answers are within (relative)."""
        return self._map.alpha

    @property
    def count(self) -> int:
        """How many values were added (merged ones included)."""
        return self._count

    def buckets(self) -> dict[int, int]:
        """Counts per sign-encoded bucket key, in value order."""
        return dict(zip(self._keys.tolist(), self._counts.tolist(), strict=True))

    def bucket_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The sorted bucket keys and their counts, as int64 arrays (shared: do not change them)."""
        return self._keys, self._counts

    def add(self, value: float) -> None:
        """Count one value."""
        self.add_many([value])

    def add_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Count a column of values."""
        keys, counts = np.unique(
            bucket_keys(np.asarray(values, np.float64), self._map.alpha), return_counts=True
        )
        self._add_sorted(keys, counts.astype(np.int64))

    def add_buckets(self, keys: Iterable[int] | np.ndarray, counts: Iterable[int] | np.ndarray) -> None:
        """Add counts to buckets, keys as made by :func:`bucket_keys` with this sketch's accuracy."""
        k = np.fromiter(keys, np.int64) if not isinstance(keys, np.ndarray) else keys.astype(np.int64)
        c = np.fromiter(counts, np.int64) if not isinstance(counts, np.ndarray) else counts.astype(np.int64)
        if len(k) != len(c):
            msg = f"{len(k)} bucket keys but {len(c)} counts"
            raise ValueError(msg)
        unique, where = np.unique(k, return_inverse=True)
        self._add_sorted(unique, np.bincount(where, c, len(unique)).astype(np.int64))

    def _add_sorted(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self._keys, self._counts = merge_bucket_lists(self._keys, self._counts, keys, counts)
        self._count += int(counts.sum())

    def merge(self, other: QuantileSketch) -> None:
        """Add the counts of ``other``: the result is the sketch of both sets of values."""
        if other._map.alpha != self._map.alpha:
            msg = f"cannot merge sketches of different accuracy ({self._map.alpha} and {other._map.alpha})"
            raise ValueError(msg)
        if other._count:
            self._add_sorted(other._keys, other._counts)

    def copy(self) -> QuantileSketch:
        """An independent copy (cheap: the arrays are shared, and never changed in place)."""
        return QuantileSketch.from_sorted_buckets(self._keys, self._counts, self._map.alpha, self._count)

    def quantile(self, q: float) -> float | None:
        """The lower ``q``-quantile (``0 <= q <= 1``), within the relative accuracy; ``None`` when empty."""
        return self.quantiles([q])[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several quantiles at once."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                msg = f"quantile must be between 0 and 1, got {q!r}"
                raise ValueError(msg)
        n = self._count
        if n == 0:
            return [None] * len(qs)
        ranks = [math.floor(q * (n - 1)) for q in qs]
        value = self._map.value
        if len(self._keys) <= _SMALL:
            # Few buckets (a window of a few readings, as most stored windows are): plain Python
            # beats numpy's per-call cost several times over.
            keys = self._keys.tolist()
            if len(keys) == 1:
                return [value(keys[0])] * len(qs)
            running = list(accumulate(self._counts.tolist()))
            return [value(keys[bisect_right(running, r)]) for r in ranks]
        # the first bucket whose running count passes the rank holds the value of that rank
        at = np.searchsorted(np.cumsum(self._counts), ranks, side="right")
        return [value(k) for k in self._keys[at].tolist()]

    def to_state(self) -> list[Any]:
        """``[alpha, keys, counts]``, keys delta-encoded (small ints pack small)."""
        if len(self._keys) <= _SMALL:
            keys = self._keys.tolist()
            deltas = keys[:1] + [b - a for a, b in pairwise(keys)]
            return [self._map.alpha, deltas, self._counts.tolist()]
        return [self._map.alpha, np.diff(self._keys, prepend=0).tolist(), self._counts.tolist()]

    @classmethod
    def from_state(cls, state: Sequence[Any]) -> QuantileSketch:
        """The sketch :meth:`to_state` described."""
        alpha, deltas, counts = state
        keys = np.cumsum(np.array(deltas, np.int64))
        return cls.from_sorted_buckets(keys, np.array(counts, np.int64), float(alpha))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        return (
            self._map.alpha == other._map.alpha
            and np.array_equal(self._keys, other._keys)
            and np.array_equal(self._counts, other._counts)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QuantileSketch(relative_accuracy={self._map.alpha}, count={self._count})"
