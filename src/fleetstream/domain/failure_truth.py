"""Ground truth of failures, for labelling training rows and scoring alerts honestly.

An :class:`Outage` is one degradation of one device (the simulator's
failures file, ``docs/simulator.md``), times in µs. A warning (an alert
opening) for a device between its ``degraded_at`` and ``failed_at`` is a
*hit*, its lead time ``failed_at`` minus the warning; any other warning is a
*false alarm*, including one during a degradation that recovered (it never
failed); a failure without a hit is a *miss*.

Example:
    >>> truth = {"d1": [Outage("d1", 100, 150, 200, None), Outage("d1", 400, None, None, 500)]}
    >>> s = score_alerts({"d1": [120, 130, 300, 450], "d2": [50]}, truth)
    >>> s.hits, s.false_alarms, s.in_recoveries, s.failures, s.detected, s.lead_times_us
    (2, 3, 1, 1, 1, [80])
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Outage:
    """One degradation of a device; times in µs, None until reached (or never)."""

    device_id: str
    degraded_at: int
    failing_at: int | None
    failed_at: int | None
    recovered_at: int | None

    def failing_window(self) -> tuple[int, int] | None:
        """``[degraded_at, failed_at)`` when it ended in a failure, else None."""
        return None if self.failed_at is None else (self.degraded_at, self.failed_at)


def label(outages: Sequence[Outage], ts: int) -> int:
    """1 when ``ts`` falls between a degradation's start and its failure, else 0."""
    for o in outages:
        window = o.failing_window()
        if window is not None and window[0] <= ts < window[1]:
            return 1
    return 0


@dataclass(slots=True)
class Score:
    """How a set of warnings fared against the truth."""

    hits: int = 0
    false_alarms: int = 0
    in_recoveries: int = 0  # of the false alarms: during a degradation that recovered
    failures: int = 0
    detected: int = 0
    lead_times_us: list[int] = field(default_factory=list)

    @property
    def precision(self) -> float:
        """Hits over all warnings (0 with no warning)."""
        total = self.hits + self.false_alarms
        return self.hits / total if total else 0.0

    @property
    def recall(self) -> float:
        """Failures warned of in time over all failures (0 with no failure)."""
        return self.detected / self.failures if self.failures else 0.0

    @property
    def f1(self) -> float:
        """The harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def median_lead_s(self) -> float | None:
        """Median lead time of the detected failures, seconds (None when none was detected)."""
        return statistics.median(self.lead_times_us) / 1e6 if self.lead_times_us else None


def score_alerts(warnings: Mapping[str, Sequence[int]], truth: Mapping[str, Sequence[Outage]]) -> Score:
    """Score warning times per device against the outages per device (devices in either count).

    Each failure counts once: detected if a warning fell in ``[degraded_at, failed_at)``, with
    the lead time of the first such warning.
    """
    s = Score()
    for device in sorted(set(warnings) | set(truth)):
        outages = truth.get(device, ())
        windows = [w for w in (o.failing_window() for o in outages) if w is not None]
        s.failures += len(windows)
        first: dict[int, int] = {}  # failure index → first warning in it
        for ts in warnings.get(device, ()):
            hit = next((i for i, (lo, hi) in enumerate(windows) if lo <= ts < hi), None)
            if hit is None:
                s.false_alarms += 1
                s.in_recoveries += any(
                    o.recovered_at is not None and o.degraded_at <= ts < o.recovered_at for o in outages
                )
                continue
            s.hits += 1
            first[hit] = min(ts, first.get(hit, ts))
        s.detected += len(first)
        s.lead_times_us.extend(windows[i][1] - ts for i, ts in sorted(first.items()))
    return s
