"""``memory://``: the in-process bus of the embedded mode.

Memory is not durable, so a publish is acknowledged when every consuming group
has *committed* the records, i.e. the engine has written them to the durable
store. Records waiting for that are bounded: past the bound, publishing raises
:class:`~fleetstream.errors.Overloaded` (HTTP 503 with Retry-After).

While the consumer commits one batch, new publishes queue up and are taken as
the next batch together: that is the group commit of the embedded mode.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fleetstream.domain.batch import Batch, concat
from fleetstream.errors import BusUnavailable, Overloaded
from fleetstream.ports import PartitionsHook


@dataclass(slots=True, eq=False)
class _Entry:
    batch: Batch
    records: int
    future: asyncio.Future[None]
    waiting_groups: int


@dataclass(slots=True, eq=False)
class _GroupQueue:
    entries: deque[_Entry] = field(default_factory=deque)
    pending: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryBatch:
    """A batch taken from one group's queue."""

    def __init__(self, queue: _GroupQueue, entries: list[_Entry]) -> None:
        self._queue = queue
        self._entries = entries
        self.batch = concat([e.batch for e in entries])
        self._records = sum(e.records for e in entries)
        self._done = False

    async def commit(self) -> None:
        if self._done:
            return
        self._done = True
        self._queue.pending -= self._records
        for entry in self._entries:
            entry.waiting_groups -= 1
            if entry.waiting_groups == 0 and not entry.future.done():
                entry.future.set_result(None)

    async def fail(self, exc: BaseException) -> None:
        if self._done:
            return
        self._done = True
        self._queue.pending -= self._records
        for entry in self._entries:
            if not entry.future.done():
                entry.future.set_exception(exc)


class MemoryBus:
    """In-process bus; see the module docstring for its acknowledgement rule."""

    def __init__(
        self, url: str = "memory://", *, max_pending: int = 200_000, ack_timeout_s: float = 30.0
    ) -> None:
        self.url = url
        self.max_pending = max_pending
        self.ack_timeout_s = ack_timeout_s
        self._topics: dict[str, dict[str, _GroupQueue]] = {}
        self._closing = False

    async def start(self) -> None:
        self._closing = False

    async def close(self) -> None:
        """Stop taking publishes; consumers finish what is queued, then their iterators end."""
        self._closing = True
        for groups in self._topics.values():
            for queue in groups.values():
                queue.wakeup.set()

    def pending(self, topic: str) -> int:
        """Records published to ``topic`` and not yet committed by its slowest group."""
        groups = self._topics.get(topic, {})
        return max((q.pending for q in groups.values()), default=0)

    async def publish(self, topic: str, batch: Batch) -> None:
        n = batch.records
        if not n:
            return
        if self._closing:
            msg = "the server is shutting down"
            raise BusUnavailable(msg)
        groups = self._topics.get(topic)
        if not groups:
            msg = f"no processor is consuming {topic!r} yet"
            raise BusUnavailable(msg)
        for queue in groups.values():
            if queue.pending + n > self.max_pending:
                msg = f"ingest queue full ({queue.pending} readings waiting to be stored)"
                raise Overloaded(msg, retry_after=1.0)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = _Entry(batch, n, future, len(groups))
        for queue in groups.values():
            queue.entries.append(entry)
            queue.pending += n
            queue.wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.ack_timeout_s)
        except TimeoutError:
            msg = f"not made durable within {self.ack_timeout_s:g} s; retry (re-sends are deduplicated)"
            raise Overloaded(msg, retry_after=self.ack_timeout_s / 10) from None

    def subscribe(
        self,
        topic: str,
        group: str,
        max_records: int,
        *,
        on_assign: PartitionsHook | None = None,
        on_revoke: PartitionsHook | None = None,
    ) -> AsyncIterator[MemoryBatch]:
        """Join ``group`` now (publishes wait for it from this call on) and iterate its batches.

        The one consumer of a group holds the topic's one partition, 0: ``on_assign([0])`` runs
        before the first batch, ``on_revoke([0])`` when the iterator ends.
        """
        groups = self._topics.setdefault(topic, {})
        if group in groups:
            msg = f"group {group!r} already consumes {topic!r} (the memory bus has one consumer per group)"
            raise BusUnavailable(msg)
        queue = groups[group] = _GroupQueue()
        return self._consume(groups, group, queue, max_records, on_assign, on_revoke)

    async def _consume(
        self,
        groups: dict[str, _GroupQueue],
        group: str,
        queue: _GroupQueue,
        max_records: int,
        on_assign: PartitionsHook | None,
        on_revoke: PartitionsHook | None,
    ) -> AsyncIterator[MemoryBatch]:
        try:
            await _call(on_assign)
            while True:
                if not queue.entries:
                    if self._closing:
                        return
                    queue.wakeup.clear()
                    await queue.wakeup.wait()
                    continue
                taken: list[_Entry] = []
                count = 0
                while queue.entries and (not taken or count + queue.entries[0].records <= max_records):
                    entry = queue.entries.popleft()
                    taken.append(entry)
                    count += entry.records
                yield MemoryBatch(queue, taken)
        finally:
            del groups[group]
            stopped = BusUnavailable("the consumer stopped before storing this batch")
            for entry in queue.entries:
                if not entry.future.done():
                    entry.future.set_exception(stopped)
            await _call(on_revoke)


async def _call(hook: PartitionsHook | None) -> None:
    if hook is not None:
        result = hook([0])
        if result is not None:
            await result
