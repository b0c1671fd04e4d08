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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Mapping

from fleetstream.domain.clock import Clock
from fleetstream.domain.stats import RateMeter
from fleetstream.simulator.delivery import (
    DUPLICATE,
    LATE,
    LATE_DUPLICATE,
    ORIGINAL,
    Delivery,
    DeliveryOptions,
    Entry,
    Message,
)
from fleetstream.simulator.fleet import Fleet
from fleetstream.simulator.lifecycle import LifecycleOptions
from fleetstream.simulator.realhost import RealHost
from fleetstream.simulator.tracker import Region
from fleetstream.simulator.transports import Transport
from fleetstream.simulator.truth import GroundTruth

log = logging.getLogger(__name__)

_LOG_EVERY_S = 10.0
_RATE_WINDOW_S = 5
_SPAN_TICKS = 5  # the most fleet time one tick of the loop generates, in ticks
STOP_FLUSH_S = 10.0  # stopping (Ctrl-C, the api's stop): how long what is queued may take to send
# the end of a --duration: long enough for a server that answers to take the last batches, short
# enough that a target that does not answer keeps the run near its duration
END_FLUSH_S = 1.0


class Simulator:
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

    @property
    def running(self) -> bool:
        """Whether the loop is running."""
        return self._loop_task is not None and not self._loop_task.done()

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

    async def tick(self, max_span_s: float | None = None) -> int:
        """One pass of the loop: queue the messages due by now and send batches; how many were due.

        Args:
            max_span_s: generate at most this much of the fleet's time (None: all of it up to
                now); the rest comes in the next ticks, or is skipped once more than
                ``max_lag_s`` behind. The loop passes ``5 * tick_s``.
        """
        now = self.clock.monotonic()
        if self._origin is None:
            self._origin = now
        elapsed = now - self._origin
        start = self._until
        if elapsed - start > self.max_lag_s:
            skipped = self.fleet.skip(elapsed - self.max_lag_s)
            self.dropped += skipped
            start = elapsed - self.max_lag_s
            log.warning(
                "the simulator stalled for %.1f s: %d messages not sent", elapsed - self._until, skipped
            )
        until = elapsed if max_span_s is None else min(elapsed, start + max_span_s)
        messages = self.fleet.advance(until, self.clock.now_us())
        if self.real_host is not None:
            messages.extend(self.real_host.poll(until, self.clock.now_us()))
        self._until = until
        self.generated += len(messages)
        if self._tagged:
            delivery = self.delivery
            if delivery.held:
                self._enqueue(delivery.due(now))
            self._enqueue(delivery.route(messages, now))
        else:
            self._queue.extend(messages)
        overflow = len(self._queue) - self.max_pending
        if overflow > 0:
            for _ in range(overflow):
                self._queue.popleft()
                if self._tagged:
                    self._tags.popleft()
            self.dropped += overflow
        self._dispatch()
        return len(messages)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Send everything queued, ignoring any backoff, and wait for every batch in flight.

        What is still queued after ``timeout_s`` is dropped; batches still in
        flight are cancelled and count as errors.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        self._flushing = True
        try:
            while self._queue or self._tasks:
                self._dispatch()
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                await asyncio.wait(set(self._tasks), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._flushing = False
        if self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._queue:
            log.warning("dropping %d queued messages: the target did not take them in time", len(self._queue))
            self.dropped += len(self._queue)
            self._queue.clear()
            self._tags.clear()

    async def _loop(self) -> None:
        next_tick = self.clock.monotonic()
        while True:
            # A bounded span per tick: when the process gets less CPU than the fleet needs, one
            # slow tick would make the next larger and so on, each holding the event loop (no
            # sends, no progress) for seconds; bounded, sends run between ticks.
            await self.tick(max_span_s=_SPAN_TICKS * self.tick_s)
            next_tick += self.tick_s
            delay = next_tick - self.clock.monotonic()
            if not 0 <= delay <= self.tick_s:  # behind (a slow tick) or the clock jumped: resync
                next_tick = self.clock.monotonic() + self.tick_s
                delay = self.tick_s if delay > 0 else 0.0
            await asyncio.sleep(delay)

    def _dispatch(self) -> None:
        if not self._flushing and self.clock.monotonic() < self._resume_at:
            return
        loop = asyncio.get_running_loop()
        queue = self._queue
        while queue and len(self._tasks) < self.max_in_flight:
            n = min(self.batch_size, len(queue))
            batch = [queue.popleft() for _ in range(n)]
            self.sent += n
            tags = None
            if self._tagged:
                tags = [self._tags.popleft() for _ in range(n)]
                self.duplicates_sent += tags.count(DUPLICATE) + tags.count(LATE_DUPLICATE)
                self.late_sent += tags.count(LATE)
            task = loop.create_task(self._send(batch, tags))
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._queue and (self.running or self._flushing):
            self._dispatch()

    def _enqueue(self, entries: list[Entry]) -> None:
        self._queue.extend(m for m, _ in entries)
        self._tags.extend(tag for _, tag in entries)

    async def _send(self, batch: list[Message], tags: list[int] | None) -> None:
        try:
            await self.transport.send(batch)
        except asyncio.CancelledError:
            self.errors += len(batch)
            raise
        except Exception as exc:  # whatever a transport raises, the simulator carries on
            self.errors += len(batch)
            self._failed(exc, len(batch))
        else:
            now = self.clock.monotonic()
            self.acknowledged += len(batch)
            self._rate.add(len(batch), now)
            if self._first_ack is None:
                self._first_ack = now
            self._backoff = 0.0
            if self.truth is not None:
                self._count(self.truth, batch, tags)

    @staticmethod
    def _count(truth: GroundTruth, batch: list[Message], tags: list[int] | None) -> None:
        if tags is None:
            for m in batch:
                truth.add(m)
            return
        # A duplicate is the same reading again: the truth counts each message's first copy.
        # (Should that copy fail and its duplicate get through, the truth misses it.)
        for m, tag in zip(batch, tags, strict=True):
            if tag in (ORIGINAL, LATE):
                truth.add(m, late=tag == LATE)

    def _failed(self, exc: Exception, n: int) -> None:
        now = self.clock.monotonic()
        self._backoff = min(10.0, max(0.5, self._backoff * 2))
        self._resume_at = now + self._backoff
        self._unlogged += n
        if self._logged_at is None or now - self._logged_at >= _LOG_EVERY_S:
            log.warning(
                "could not deliver %d messages (%s: %s); pausing sends for %.1f s",
                self._unlogged,
                type(exc).__name__,
                exc,
                self._backoff,
            )
            self._unlogged = 0
            self._logged_at = now
