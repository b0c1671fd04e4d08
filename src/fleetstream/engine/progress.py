"""What a long replay of the log tells the user while it runs."""

from __future__ import annotations


def replay_progress(done: int, position: int, start: int, end: int, elapsed_s: float) -> str:
    """One log line: where the replay is, how fast it goes and about how long is left.

    ``done`` records replayed in ``elapsed_s`` seconds, from log position ``start`` to
    ``position`` of ``end``. The time left assumes the rest goes as fast as what is done.

    Example:
        >>> replay_progress(250_000, 250_000, 0, 1_000_000, 2.5)
        'replaying the log: position 250,000 of 1,000,000 (25%), 100,000 records/s, about 8 s left'
    """
    span = max(end - start, 1)
    covered = max(position - start, 0)
    share = min(covered / span, 1.0)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if covered and elapsed_s > 0:
        left = f"about {_duration((end - position) * elapsed_s / covered)} left"
    else:
        left = "time left unknown"
    return f"replaying the log: position {position:,} of {end:,} ({share:.0%}), {rate:,.0f} records/s, {left}"


def _duration(seconds: float) -> str:
    """``8 s``, ``2 min 5 s``, ``1 h 3 min``."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
