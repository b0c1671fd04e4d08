"""Time buckets for series: durations as text, alignment, counting, and picking a size for a chart.

Buckets shorter than a day are aligned to the Unix epoch (UTC), so a 10 s bucket
starts at :00, :10, ... whatever the time zone. Buckets of whole days are aligned
to midnight in a time zone, counting days from Monday 2000-01-03 (the origin
DuckDB and TimescaleDB use), so ``7d`` buckets are weeks starting on Monday; a
day bucket on the day clocks go forward is 23 h long, on the day they go back
25 h. Every instant is an integer of microseconds since the epoch.

Time zone rules come from the system's IANA database through :mod:`zoneinfo`,
for every store: DuckDB's ICU carries its own copy, which differs for some zones
(where clocks go back at midnight, rules changed since), and two stores must
never disagree on where a day starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from fleetstream.domain.timeutil import MIN_US, datetime_to_us, us_to_datetime

MS_US = 1_000
S_US = 1_000_000
DAY_US = 86_400 * S_US
MAX_BUCKETS = 10_000
"""The most buckets one series query may return per sensor."""
MAX_BUCKET_US = 3_660_000 * DAY_US
"""Longer than 0001-01-01 to 9999-12-31: a larger bucket could never hold more."""
ORIGIN = date(2000, 1, 3)
"""Day buckets count days from this Monday (local midnight)."""

_UNITS = {"us": 1, "ms": MS_US, "s": S_US, "m": 60 * S_US, "h": 3_600 * S_US, "d": DAY_US, "w": 7 * DAY_US}
_SHORT = re.compile(r"(?:\d+(?:us|ms|s|m|h|d|w))+")
_SHORT_PART = re.compile(r"(\d+)(us|ms|s|m|h|d|w)")
_ISO = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?=\d)(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+)(?:[.,](?P<frac>\d{1,6}))?S)?)?",
    re.IGNORECASE,
)
_EXPECTED = "expected a duration like 500ms, 10s, 1m, 15m, 1h, 1d, 7d or ISO 8601 like PT5M"

NICE_BUCKETS: tuple[int, ...] = (
    *(n * MS_US for n in (1, 2, 5, 10, 20, 50, 100, 200, 500)),
    *(n * S_US for n in (1, 2, 5, 10, 15, 30)),
    *(n * 60 * S_US for n in (1, 2, 5, 10, 15, 30)),
    *(n * 3_600 * S_US for n in (1, 2, 3, 6, 12)),
    *(n * DAY_US for n in (1, 2, 7, 14, 30, 60, 90, 180)),
    *(n * 365 * DAY_US for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)),
)
"""The sizes ``points=`` picks from: 1-2-5 steps, then clock and calendar-like steps, then years of
365 days."""


def parse_bucket(text: str) -> int:
    """A bucket size in microseconds from ``500ms``, ``10s``, ``1h30m``, ``7d`` or ISO 8601 ``PT5M``.

    Raises:
        ValueError: with a message fit to show a user.

    >>> parse_bucket("10s"), parse_bucket("1h30m") == parse_bucket("PT1H30M"), parse_bucket("PT0.5S")
    (10000000, True, 500000)
    """
    raw = text.strip()
    if raw.startswith("-") and (_SHORT.fullmatch(raw[1:]) or _ISO.fullmatch(raw[1:])):
        msg = f"must be longer than 0, got '{text}'"
        raise ValueError(msg)
    if _SHORT.fullmatch(raw):
        width = sum(int(n) * _UNITS[unit] for n, unit in _SHORT_PART.findall(raw))
    elif (iso := _ISO.fullmatch(raw)) and any(iso.groupdict().values()):
        parts = iso.groupdict()
        width = sum(int(parts[k] or 0) * _UNITS[k] for k in ("w", "d", "h", "m", "s"))
        width += int((parts["frac"] or "").ljust(6, "0"))
    elif re.match(r"P(?:\d+Y)?\d+[YM]", raw, re.IGNORECASE):
        msg = f"months and years have no fixed length: use days (e.g. 30d, 365d), got '{text}'"
        raise ValueError(msg)
    else:
        msg = f"{_EXPECTED}, got '{text}'"
        raise ValueError(msg)
    if width <= 0:
        msg = f"must be longer than 0, got '{text}'"
        raise ValueError(msg)
    if width > MAX_BUCKET_US:
        msg = f"must be at most {MAX_BUCKET_US // DAY_US}d, got '{text}'"
        raise ValueError(msg)
    if width >= DAY_US and width % DAY_US:
        msg = f"a bucket of a day or more must be whole days (1d, 2d, 7d, ...), got '{text}'"
        raise ValueError(msg)
    return width


def format_bucket(width: int) -> str:
    """The short text of a bucket size: days alone, else hours down to microseconds.

    >>> [format_bucket(w) for w in (10 * S_US, 5_400 * S_US, 1_500_000, 7 * DAY_US)]
    ['10s', '1h30m', '1s500ms', '7d']
    """
    if width % DAY_US == 0:
        return f"{width // DAY_US}d"
    out = []
    for unit in ("h", "m", "s", "ms", "us"):
        count, width = divmod(width, _UNITS[unit])
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)


@cache
def _zone_names() -> frozenset[str]:
    # "localtime" is the host's zone under another name: a query must not mean something else per host.
    return frozenset(available_timezones() - {"localtime", "posixrules", "Factory"})


def zone(name: str) -> ZoneInfo:
    """The IANA time zone of that name (``UTC``, ``Europe/Amsterdam``, ...).

    Raises:
        ValueError: an unknown name (names are case-sensitive).
    """
    if name not in _zone_names():
        msg = f"unknown time zone '{name}'"
        raise ValueError(msg)
    return ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class Buckets:
    """Buckets of ``width`` microseconds; whole days are aligned to midnight in ``tz``.

    Example:
        >>> ams = Buckets(DAY_US, "Europe/Amsterdam")
        >>> t = ams.start_of(datetime_to_us(datetime(2024, 3, 31, 12, tzinfo=UTC)))
        >>> ams.show(t), (ams.start_of(t + 23 * 3_600 * S_US) - t) // (3_600 * S_US)
        ('2024-03-31T00:00:00+01:00', 23)
        >>> Buckets(7 * S_US).count(0, 60 * S_US)
        9
    """

    width: int
    tz: str = "UTC"
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.width <= 0:
            msg = f"a bucket must be longer than 0, got {self.width} us"
            raise ValueError(msg)
        object.__setattr__(self, "_zone", zone(self.tz))

    @property
    def by_day(self) -> bool:
        """Whether buckets are whole days, aligned to midnight in the zone."""
        return self.width % DAY_US == 0

    def start_of(self, ts: int) -> int:
        """The start of the bucket holding ``ts``."""
        if not self.by_day:
            return ts - ts % self.width
        try:
            return self._day_start(self._day_index(ts))
        except (OverflowError, ValueError):
            raise self._out_of_range() from None

    def starts(self, start: int, end: int) -> list[int]:
        """The start of every bucket meeting ``[start, end)`` (``end > start``), in order."""
        if not self.by_day:
            return list(range(self.start_of(start), end, self.width))
        try:
            return [self._day_start(i) for i in range(self._day_index(start), self._day_index(end - 1) + 1)]
        except (OverflowError, ValueError):
            raise self._out_of_range() from None

    def count(self, start: int, end: int) -> int:
        """How many buckets meet ``[start, end)`` (``end > start``).

        Raises:
            ValueError: a bucket of the range starts before 0001-01-01 or cannot be shown in the zone.
        """
        first, last = self.start_of(start), self.start_of(end - 1)
        self.show(first)
        self.show(last)
        if self.by_day:
            return self._day_index(end - 1) - self._day_index(start) + 1
        return (last - first) // self.width + 1

    def show(self, ts: int) -> str:
        """RFC 3339 text of an instant: ``Z`` in UTC, else the zone's offset at that instant.

        Raises:
            ValueError: an instant outside 0001-01-01 to 9999-12-31 in the zone.
        """
        if ts < MIN_US:
            raise self._out_of_range()
        try:
            local = us_to_datetime(ts).astimezone(self._zone)
        except (OverflowError, ValueError):
            raise self._out_of_range() from None
        offset = local.utcoffset()
        if self.tz == "UTC" or offset is None or offset.seconds % 60 or offset.microseconds:
            # Local mean time before standard zones had offsets in seconds, which RFC 3339 cannot
            # write: the same instant in UTC instead.
            local = local.astimezone(UTC)
            return local.replace(tzinfo=None).isoformat() + "Z"
        return local.isoformat()

    def _day_start(self, index: int) -> int:
        day = date.fromordinal(ORIGIN.toordinal() + index * (self.width // DAY_US))
        # fold=0: where midnight is skipped (clocks go forward at 00:00) the day starts at the first
        # instant after the gap; where it repeats (back at 01:00 to 00:00), at the first midnight.
        return datetime_to_us(datetime.combine(day, time(0), tzinfo=self._zone))

    def _day_index(self, ts: int) -> int:
        local = us_to_datetime(ts).astimezone(self._zone)
        return (local.toordinal() - ORIGIN.toordinal()) // (self.width // DAY_US)

    def _out_of_range(self) -> ValueError:
        msg = (
            f"{format_bucket(self.width)} buckets in {self.tz} near the range would fall outside "
            "0001-01-01 to 9999-12-31"
        )
        return ValueError(msg)


def pick_bucket(start: int, end: int, points: int, tz: str = "UTC") -> int:
    """The smallest of :data:`NICE_BUCKETS` giving at most ``points`` buckets over ``[start, end)``.

    When none can (``points`` 1 and a range across a boundary every size shares, e.g. the epoch),
    the one giving the fewest.

    Raises:
        ValueError: no size can be shown in the zone this close to 0001-01-01 or 9999-12-31.

    >>> hour = 3_600 * S_US
    >>> format_bucket(pick_bucket(0, hour, 500)), format_bucket(pick_bucket(0, 90 * 24 * hour, 500))
    ('10s', '6h')
    """
    best: tuple[int, int] | None = None
    for width in NICE_BUCKETS:
        try:
            n = Buckets(width, tz).count(start, end)
        except ValueError:
            continue
        if n <= points:
            return width
        if best is None or n < best[0]:
            best = (n, width)
    if best is None:
        msg = f"no bucket near the range can be shown in {tz} (0001-01-01 to 9999-12-31 only)"
        raise ValueError(msg)
    return best[1]
