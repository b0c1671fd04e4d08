"""The simulator's loop, one tick at a time: generate what is due, queue it, send it in batches.

:class:`SimulatorLoop` holds the steps of :class:`~fleetstream.simulator.simulator.Simulator`
that run inside its loop: :meth:`~SimulatorLoop.tick` asks the fleet for the messages due
(skipping what a stall left too far behind), routes them through the delivery knobs and
bounds the queue; the dispatch hands the queue to the transport in batches, counts their
acknowledgements (and the ground truth), and backs off after a failure; :meth:`~SimulatorLoop.flush`
sends what is left. The simulator's face (construction, start, stop, pause) is in
:mod:`~fleetstream.simulator.simulator`, which sets the state declared here.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from fleetstream.domain.clock import Clock
from fleetstream.domain.stats import RateMeter
from fleetstream.simulator.delivery import (
    DUPLICATE,
    LATE,
    LATE_DUPLICATE,
    ORIGINAL,
    Delivery,
    Entry,
    Message,
)
from fleetstream.simulator.fleet import Fleet
from fleetstream.simulator.realhost import RealHost
from fleetstream.simulator.transports import Transport
from fleetstream.simulator.truth import GroundTruth

# The simulator's logger, as before these steps had a module of their own.
log = logging.getLogger("fleetstream.simulator.simulator")

_LOG_EVERY_S = 10.0
_SPAN_TICKS = 5  # the most fleet time one tick of the loop generates, in ticks


class SimulatorLoop:
    """The steps :class:`~fleetstream.simulator.simulator.Simulator` runs in its loop."""

    fleet: Fleet
    delivery: Delivery
    truth: GroundTruth | None
    real_host: RealHost | None
    clock: Clock
    transport: Transport
    batch_size: int
    tick_s: float
    max_in_flight: int
    max_pending: int
    max_lag_s: float
    generated: int
    sent: int
    acknowledged: int
    errors: int
    dropped: int
    duplicates_sent: int
    late_sent: int
    late_unsent: int
    _queue: deque[Message]
    _tagged: bool
    _tags: deque[int]
    _tasks: set[asyncio.Task[None]]
    _rate: RateMeter
    _first_ack: float | None
    _origin: float | None
    _until: float
    _backoff: float
    _resume_at: float
    _flushing: bool
    _unlogged: int
    _logged_at: float | None
    _loop_task: asyncio.Task[None] | None

    @property
    def running(self) -> bool:
        """Whether the loop is running."""
        return self._loop_task is not None and not self._loop_task.done()

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
