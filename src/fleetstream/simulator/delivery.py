"""How a fleet's messages are delivered: out of order, twice, or too late, on purpose.

A server with event-time windows, a watermark and dedup behaves differently
from a naive one only when its input is imperfect. :class:`Delivery` makes the
simulator's input imperfect in the ways real fleets are, each one a knob that
is off by default:

* **jitter**: each message is sent up to ``jitter_s`` after it was generated
  (its event time stays the true one), so arrivals are out of order within the jitter;
* **duplicates**: that fraction of messages is sent a second time, identical
  (same ``msg_id``), 0.1 to 1 s after the first copy, in a later batch;
* **late**: that fraction is held back and sent ``late_delay_s`` after it was
  generated, past the server's allowed lateness, so the server must count it late.

Which message is picked, and by how much it is delayed, is a function of the
seed, the device id and the message's sequence number (a counter-based
generator, like Philox): a run with the same seed picks the same messages
however the loop's ticks happen to fall on the real clock.

Pure logic: time comes in as arguments (monotonic seconds).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from dataclasses import dataclass
from typing import Any

from fleetstream.domain import timeutil
from fleetstream.errors import ConfigError

Message = dict[str, Any]

ORIGINAL = 0
"""Tag of a message's only (or first) copy, sent on time (jitter aside)."""
DUPLICATE = 1
"""Tag of the second copy of a message."""
LATE = 2
"""Tag of a message held back until ``late_delay_s`` after it was generated."""
LATE_DUPLICATE = 3
"""Tag of the second copy of a late message."""

Entry = tuple[Message, int]
"""A message and its tag (:data:`ORIGINAL`, :data:`DUPLICATE`, :data:`LATE`, :data:`LATE_DUPLICATE`)."""

DUPLICATE_AFTER_S = (0.1, 1.0)
"""A duplicate follows its first copy by a uniform delay in this range (seconds)."""

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_UNIT = 2.0**-53
# A message's 64 random bits give three fractions of 21 bits each (steps of 5e-7): whether it is
# late, its jitter, whether it is duplicated. Rarer draws (a duplicate's delay, a device's clock
# offset) mix the bits again with a purpose of their own.
_SLICE = 0x1FFFFF
_SLICE_UNIT = 2.0**-21
_DUPLICATE_DELAY, _CLOCK_SKEW = 1, 2


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds from ``500ms``, ``2s``, ``1.5m``, ``1h`` or a plain number of seconds.

    Raises:
        ConfigError: anything else (negative durations included), naming ``what``.

    Example:
        >>> parse_duration("500ms"), parse_duration("2s"), parse_duration("1m"), parse_duration("3")
        (0.5, 2.0, 60.0, 3.0)
    """
    if isinstance(text, int | float):
        if text >= 0:
            return float(text)
        msg = f"{what}: expected a duration such as 500ms, 2s, 1m or a number of seconds, got {text!r}"
        raise ConfigError(msg)
    try:
        return timeutil.parse_duration(text.lower()) / 1_000_000
    except ValueError as exc:
        msg = f"{what}: {exc}"
        raise ConfigError(msg) from None


def _mix(z: int) -> int:
    # splitmix64's finaliser: every input bit reaches every output bit.
    z = (z + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class Draws:
    """Random bits that depend only on the seed, a device id and a message's sequence number.

    Example:
        >>> a, b = Draws(42), Draws(42)
        >>> a.device_skew("thermostat-0001") == b.device_skew("thermostat-0001")
        True
        >>> a.message_bits("host-0001", 7) == b.message_bits("host-0001", 7) != a.message_bits("host-0001", 8)
        True
    """

    __slots__ = ("_devices", "_seed")

    def __init__(self, seed: int) -> None:
        self._seed = _mix(seed & _MASK)
        self._devices: dict[str, int] = {}

    def message_bits(self, device_id: str, seq: int) -> int:
        """64 random bits of a device's ``seq``-th message."""
        base = self._devices.get(device_id)
        if base is None:
            digest = hashlib.blake2b(device_id.encode(), digest_size=8).digest()
            base = self._devices[device_id] = _mix(self._seed ^ int.from_bytes(digest, "little"))
        return _mix(base ^ seq)

    @staticmethod
    def uniform(bits: int, purpose: int) -> float:
        """A number in ``[0, 1)`` drawn for ``purpose`` from a message's bits."""
        return (_mix(bits ^ (purpose * _GOLDEN & _MASK)) >> 11) * _UNIT

    def device_skew(self, device_id: str) -> float:
        """A device's draw in ``[0, 1)`` for its clock offset."""
        return self.uniform(self.message_bits(device_id, -1 & _MASK), _CLOCK_SKEW)


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    """The delivery knobs; all off by default.

    Attributes:
        jitter_s: each message is sent a uniform 0..``jitter_s`` seconds after it was generated.
        duplicates: fraction of messages sent a second time (0..1).
        late: fraction of messages held back for ``late_delay_s`` (0..1).
        late_delay_s: how long a late message is held: more than the server's
            out-of-orderness plus the smallest window plus the allowed lateness (5 + 10 + 30 s by
            default) plus the jitter.
    """

    jitter_s: float = 0.0
    duplicates: float = 0.0
    late: float = 0.0
    late_delay_s: float = 50.0

    def __post_init__(self) -> None:
        if not self.jitter_s >= 0:
            msg = f"the jitter must be >= 0 s, got {self.jitter_s}"
            raise ConfigError(msg)
        for name, fraction in (("duplicates", self.duplicates), ("late", self.late)):
            if not 0.0 <= fraction <= 1.0:
                msg = f"{name} is a fraction of messages: expected 0..1, got {fraction}"
                raise ConfigError(msg)
        if not self.late_delay_s > 0:
            msg = f"the late delay must be > 0 s, got {self.late_delay_s}"
            raise ConfigError(msg)

    @property
    def active(self) -> bool:
        """Whether any knob is on."""
        return self.jitter_s > 0 or self.duplicates > 0 or self.late > 0


class Delivery:
    """Decides when each message (and its duplicate) is sent, and holds it until then.

    Example:
        >>> delivery = Delivery(DeliveryOptions(late=1.0, late_delay_s=40), seed=1)
        >>> delivery.route([{"device_id": "a", "msg_id": "x-0"}], now=0.0)
        []
        >>> delivery.due(39.9), delivery.due(40.0)
        ([], [({'device_id': 'a', 'msg_id': 'x-0'}, 2)])
    """

    def __init__(self, options: DeliveryOptions, seed: int) -> None:
        self.options = options
        self.draws = Draws(seed)
        self.late_picked = 0
        self.duplicates_picked = 0
        self.held_late = 0
        """Late messages (first copies) held now."""
        self._held: list[tuple[float, int, Message, int]] = []  # a heap, by due time
        self._order = itertools.count()  # keeps equal due times first-in, first-out
        self._unnumbered = itertools.count()

    @property
    def held(self) -> int:
        """Messages (copies) waiting for their time."""
        return len(self._held)

    def route(self, messages: list[Message], now: float) -> list[Entry]:
        """The messages to send now; the others are held until :meth:`due` hands them out."""
        opts = self.options
        if not opts.active:
            return [(m, ORIGINAL) for m in messages]
        draws, held, order, push = self.draws, self._held, self._order, heapq.heappush
        late, jitter, duplicates = opts.late, opts.jitter_s, opts.duplicates
        low, high = DUPLICATE_AFTER_S
        ready: list[Entry] = []
        for m in messages:
            bits = draws.message_bits(m["device_id"], self._seq(m))
            tag, due = ORIGINAL, now
            if late and (bits & _SLICE) * _SLICE_UNIT < late:
                tag, due = LATE, now + opts.late_delay_s
                self.late_picked += 1
                self.held_late += 1
            elif jitter:
                due = now + jitter * ((bits >> 21) & _SLICE) * _SLICE_UNIT
            if due > now:
                push(held, (due, next(order), m, tag))
            else:
                ready.append((m, tag))
            if duplicates and ((bits >> 42) & _SLICE) * _SLICE_UNIT < duplicates:
                after = low + (high - low) * draws.uniform(bits, _DUPLICATE_DELAY)
                push(held, (due + after, next(order), m, LATE_DUPLICATE if tag == LATE else DUPLICATE))
                self.duplicates_picked += 1
        return ready

    def due(self, now: float) -> list[Entry]:
        """The held messages whose time has come, oldest due first."""
        held, pop = self._held, heapq.heappop
        out: list[Entry] = []
        while held and held[0][0] <= now:
            _, _, m, tag = pop(held)
            out.append((m, tag))
        if self.held_late:
            self.held_late -= sum(1 for _, tag in out if tag == LATE)
        return out

    def release(self, now: float) -> tuple[list[Entry], int]:
        """At the end of a run: everything held that may still be sent now, and how many late ones may not.

        Jittered messages and duplicates go out at once. Late messages (and
        their copies) not due yet are given up: sent now they would not be
        late, which would make them lie about what the server should count.
        """
        out = self.due(now)
        unsent = 0
        for _, _, m, tag in sorted(self._held):
            if tag == LATE:
                unsent += 1
            elif tag != LATE_DUPLICATE:
                out.append((m, tag))
        self._held.clear()
        self.held_late = 0
        return out, unsent

    def _seq(self, message: Message) -> int:
        # The fleet's msg_id is "<boot>-<seq>"; boot changes per run, seq does not.
        msg_id = message.get("msg_id")
        if type(msg_id) is str:
            tail = msg_id[msg_id.rfind("-") + 1 :]
            if tail.isdigit():
                return int(tail)
        return next(self._unnumbered)
