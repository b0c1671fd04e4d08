"""The simulator: one loop that, every tick, sends what a fleet has due, in batches.

There is no task or thread per device. Every ``tick_s`` the loop asks the
:class:`~fleetstream.simulator.fleet.Fleet` for the messages due by now,
queues them, and hands the queue to the transport in batches of at most
``batch_size``, with at most ``max_in_flight`` batches in flight. A failed
batch is counted, logged (at most every 10 s) and makes the loop back off; it
never stops the simulator. While the target cannot keep up, the queue is
bounded: the oldest messages are dropped (and counted) rather than memory
growing without end.

Between the fleet and the queue, a :class:`~fleetstream.simulator.delivery.Delivery`
may hold messages back (jitter, late) and schedule second copies
(duplicates); with its knobs off, every message is queued when generated.

This module holds the simulator's face (construction, start, stop, pause, resume, run);
the steps its loop runs (tick, dispatch, flush) are in :mod:`~fleetstream.simulator.simulator_loop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Mapping

from fleetstream.domain.clock import Clock
from fleetstream.domain.stats import RateMeter
from fleetstream.simulator.delivery import Delivery, DeliveryOptions, Message
from fleetstream.simulator.fleet import Fleet
from fleetstream.simulator.lifecycle import LifecycleOptions
from fleetstream.simulator.realhost import RealHost
from fleetstream.simulator.simulator_loop import SimulatorLoop
from fleetstream.simulator.tracker import Region
from fleetstream.simulator.transports import Transport
from fleetstream.simulator.truth import GroundTruth

_RATE_WINDOW_S = 5
STOP_FLUSH_S = 10.0  # stopping (Ctrl-C, the api's stop): how long what is queued may take to send
# the end of a --duration: long enough for a server that answers to take the last batches, short
# enough that a target that does not answer keeps the run near its duration
END_FLUSH_S = 1.0


class Simulator(SimulatorLoop):
    """Drives a fleet of simulated devices against a transport.

    Args:
        devices: how many devices (dealt round-robin over the kinds, see ``kinds``).
        rate: messages per device per second of typed kinds; host monitors' periods are divided by it.
        seed: makes ids, phases, values, clock skews and delivery picks repeatable;
            None draws one (see :attr:`seed`).
        clock: gives event times (``now_us``) and the schedule's time (``monotonic``).
        transport: where batches go; started by :meth:`start` and closed by :meth:`stop`.
        kinds: weight per kind key (``thermostat``, ``barometer``, ``hygrometer``,
            ``heartrate``, ``host``); None weighs every kind equally.
        batch_size: most messages in one batch.
        tick_s: how often the loop wakes up.
        max_in_flight: batches being sent at once.
        max_pending: messages queued for sending before the oldest are dropped
            (default: 10 s of the fleet's traffic, at least 10 batches).
        max_lag_s: after a stall (a suspended process) longer than this, the
            missed messages are not generated at all, only counted as dropped.
        delivery: jitter, duplicates and late messages (see
            :class:`~fleetstream.simulator.delivery.DeliveryOptions`); None: all off.
        clock_skew_s: each device's clock is off by a fixed offset in ``[-clock_skew_s, +clock_skew_s]``.
        truth: counts every distinct message the server acknowledged, per event-time window.
        lifecycle: failure, offline and maintenance rates of the devices (None: the defaults).
        region: where trackers move (None: around Amsterdam).
        real_host: one extra device reporting this machine's real sensors (``--real-host``).

    Counters (messages): ``generated``; ``sent`` (handed to the transport,
    second copies included); ``acknowledged``; ``errors`` (rejected, or
    undeliverable after the transport's retries); ``dropped`` (never sent: the
    target was too slow); ``duplicates_sent`` (second copies sent);
    ``late_sent`` (held back past the late delay, then sent); ``late_unsent``
    (held back when the run ended, so never sent). :attr:`rate` is the
    acknowledged messages per second of the last seconds.

    Example:
        A test drives it with a manual clock and a fake transport::

            sim = Simulator(10, 1.0, 42, clock, transport)
            await sim.start()   # or call ``tick()`` yourself after clock.advance(...)
            ...
            await sim.stop()
    """

    def __init__(
        self,
        devices: int,
        rate: float,
        seed: int | None,
        clock: Clock,
        transport: Transport,
        *,
        kinds: Mapping[str, float] | None = None,
        batch_size: int = 500,
        tick_s: float = 0.1,
        max_in_flight: int = 4,
        max_pending: int | None = None,
        max_lag_s: float = 5.0,
        delivery: DeliveryOptions | None = None,
        clock_skew_s: float = 0.0,
        truth: GroundTruth | None = None,
        lifecycle: LifecycleOptions | None = None,
        region: Region | None = None,
        real_host: RealHost | None = None,
    ) -> None:
        if batch_size < 1 or max_in_flight < 1 or not tick_s > 0:
            msg = "batch_size and max_in_flight must be >= 1, tick_s > 0"
            raise ValueError(msg)
        self.seed = random.randrange(2**63) if seed is None else seed
        """The seed in use: the one given, or the one drawn (to repeat a run with)."""
        self.fleet = Fleet(
            devices, rate, self.seed, kinds, clock_skew_s=clock_skew_s, lifecycle=lifecycle, region=region
        )
        self.delivery = Delivery(delivery or DeliveryOptions(), self.seed)
        self.truth = truth
        self.real_host = real_host
        self.device_rate = rate
        self.clock = clock
        self.transport = transport
        self.batch_size = batch_size
        self.tick_s = tick_s
        self.max_in_flight = max_in_flight
        self._sized = max_pending is None  # sized to the fleet: resized when the fleet changes
        self.max_pending = max_pending or max(10 * batch_size, round(10 * self.fleet.messages_per_s))
        self.max_lag_s = max_lag_s
        self.generated = self.sent = self.acknowledged = self.errors = self.dropped = 0
        self.duplicates_sent = self.late_sent = self.late_unsent = 0
        self._queue: deque[Message] = deque()
        # The tag of each queued message (original, duplicate, late), kept in step with the queue
        # only when a delivery knob is on: without them, the queue is the fleet's messages as is.
        self._tagged = self.delivery.options.active
        self._tags: deque[int] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rate = RateMeter(_RATE_WINDOW_S)
        self._first_ack: float | None = None
        self._origin: float | None = None
        self._until = 0.0  # elapsed time generated so far
        self._backoff = 0.0
        self._resume_at = 0.0
        self._flushing = False
        self._unlogged = 0
        self._logged_at: float | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._paused_at: float | None = None

    @property
    def rate(self) -> float:
        """Acknowledged messages per second, over the last (up to 5) complete seconds."""
        if self._first_ack is None:
            return 0.0
        now = self.clock.monotonic()
        # The meter divides by its whole window; early on, fewer seconds have passed.
        seconds = min(_RATE_WINDOW_S, int(now) - int(self._first_ack))
        return self._rate.rate(now) * _RATE_WINDOW_S / seconds if seconds > 0 else 0.0

    @property
    def pending(self) -> int:
        """Messages queued, not sent yet."""
        return len(self._queue)

    @property
    def held(self) -> int:
        """Messages (and second copies) held back by the delivery knobs, not queued yet."""
        return self.delivery.held

    async def start(self) -> None:
        """Start the transport, then the loop (the fleet's time starts now)."""
        if self._loop_task is not None:
            msg = "the simulator was started already"
            raise RuntimeError(msg)
        await self.transport.start()
        self._loop_task = asyncio.create_task(self._loop(), name="fleetstream-simulator")

    async def stop(self, flush_timeout_s: float = STOP_FLUSH_S) -> None:
        """Stop the loop, send what is queued (for at most ``flush_timeout_s``), close the transport.

        Messages held back for jitter, and second copies, are sent at once.
        Late messages whose delay has not passed are not sent (sent now, they
        would not be late): :attr:`late_unsent` counts them.
        """
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.real_host is not None:
            self.real_host.cancel()
        released, unsent = self.delivery.release(self.clock.monotonic())
        self._enqueue(released)
        self.late_unsent += unsent
        try:
            await self.flush(flush_timeout_s)
        finally:
            await self.transport.close()

    def resized(self) -> None:
        """Call after changing the fleet: a queue limit sized to the fleet follows its new size."""
        if self._sized:
            self.max_pending = max(10 * self.batch_size, round(10 * self.fleet.messages_per_s))

    @property
    def elapsed_s(self) -> float:
        """The fleet's time generated so far (seconds since it started, paused stretches left out)."""
        return self._until

    @property
    def paused(self) -> bool:
        """Whether :meth:`pause` stopped the loop (the devices stay defined)."""
        return self._paused_at is not None

    async def pause(self, flush_timeout_s: float = 5.0) -> None:
        """Stop generating, keeping the fleet and the transport; send what is queued. Idempotent."""
        task, self._loop_task = self._loop_task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self.real_host is not None:
            self.real_host.cancel()
        self._paused_at = self.clock.monotonic()
        await self.flush(flush_timeout_s)

    async def resume(self) -> None:
        """Start generating again after :meth:`pause`, the fleet's time going on where it stopped.

        The paused stretch is left out of the fleet's time: no message of it is
        sent late or counted as dropped. Idempotent while running.
        """
        if self.running:
            return
        if self._paused_at is not None and self._origin is not None:
            self._origin += self.clock.monotonic() - self._paused_at
        self._paused_at = None
        self._loop_task = asyncio.create_task(self._loop(), name="fleetstream-simulator")

    async def run(self, duration_s: float | None = None) -> None:
        """Start, run for ``duration_s`` seconds of real time (None: until cancelled), then stop.

        A duration bounds the whole run: at its end the last batches get ``END_FLUSH_S`` to be
        acknowledged, not the retries of a target that does not answer (those batches are
        cancelled and count as :attr:`errors`, what is still queued as :attr:`dropped`).
        """
        await self.start()
        try:
            task = self._loop_task
            assert task is not None
            done, _ = await asyncio.wait({task}, timeout=duration_s)
            if task in done:
                task.result()  # the loop ends only by failing: show why
        finally:
            await self.stop(STOP_FLUSH_S if duration_s is None else END_FLUSH_S)
