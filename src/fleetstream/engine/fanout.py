"""One broadcast of acknowledged messages to every live subscriber.

Each subscriber has a bounded queue. Publishing never waits: when a queue is
full the message is skipped for that subscriber and counted; a subscriber whose
queue has stayed full for ``stall_timeout_s`` is dropped. A slow client
therefore never slows ingest, and a stalled one does not linger.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable
from typing import Generic, TypeVar

from fleetstream.domain.batch import Batch
from fleetstream.domain.records import DeviceMessage

T = TypeVar("T")


class Subscriber(Generic[T]):
    """One live client's view of a stream (of device messages, windows, device events ...)."""

    def __init__(
        self,
        device_ids: Collection[str] | None,
        max_queue: int,
        on_close: Callable[[Subscriber[T]], None],
        accept: Callable[[T], bool] | None = None,
    ) -> None:
        self.device_ids = frozenset(device_ids) if device_ids else None
        self.accept = accept
        self.queue: asyncio.Queue[T] = asyncio.Queue(max_queue)
        self.skipped = 0
        self.dropped = False
        self.full_since: float | None = None
        self._wakeup = asyncio.Event()
        self._on_close = on_close

    async def get(self) -> T | None:
        """The next message, or ``None`` once the subscriber was dropped and has drained."""
        while True:
            if not self.queue.empty():
                message = self.queue.get_nowait()
                self.full_since = None
                return message
            if self.dropped:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()

    def offer(self, message: T, now: float, stall_timeout_s: float) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.skipped += 1
            if self.full_since is None:
                self.full_since = now
            elif now - self.full_since > stall_timeout_s:
                self.drop()
        self._wakeup.set()

    def drop(self) -> None:
        """End this subscription (its consumer drains what is queued, then sees ``None``)."""
        self.dropped = True
        self._wakeup.set()

    def close(self) -> None:
        """Unregister; call when the client goes away."""
        self.dropped = True
        self._on_close(self)


class Hub:
    """The broadcast; see the module docstring."""

    def __init__(
        self, monotonic: Callable[[], float], *, max_queue: int = 1000, stall_timeout_s: float = 10.0
    ) -> None:
        self._monotonic = monotonic
        self.max_queue = max_queue
        self.stall_timeout_s = stall_timeout_s
        self._all: set[Subscriber[DeviceMessage]] = set()
        self._by_device: dict[str, set[Subscriber[DeviceMessage]]] = {}
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._all) + sum(len(s) for s in self._by_device.values())

    def subscribe(
        self, device_ids: Collection[str] | None = None, max_queue: int | None = None
    ) -> Subscriber[DeviceMessage]:
        """A new subscriber to all messages, or to those of ``device_ids``."""
        sub: Subscriber[DeviceMessage] = Subscriber(device_ids, max_queue or self.max_queue, self._remove)
        if sub.device_ids is None:
            self._all.add(sub)
        else:
            for device in sub.device_ids:
                self._by_device.setdefault(device, set()).add(sub)
        return sub

    def publish(self, batch: Batch) -> None:
        """Offer acknowledged messages to every interested subscriber; never waits.

        Messages are rebuilt from the batch's columns only when someone listens, and only those
        of followed devices when nobody follows every device.
        """
        if not self._all and not self._by_device:
            return
        if self._all:
            messages = batch.messages()
        else:
            followed = set(self._by_device).intersection(batch.device_id)
            followed.update(e.device_id for e in batch.events if e.device_id in self._by_device)
            if not followed:
                return
            messages = batch.messages(followed)
        now = self._monotonic()
        timeout = self.stall_timeout_s
        for message in messages:
            for sub in self._all:
                sub.offer(message, now, timeout)
            followers = self._by_device.get(message.device_id)
            if followers:
                for sub in followers:
                    sub.offer(message, now, timeout)
        for sub in [s for s in self._everyone() if s.dropped]:
            self.dropped_total += 1
            self._remove(sub)

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for sub in list(self._everyone()):
            sub.drop()
            self._remove(sub)

    def _everyone(self) -> set[Subscriber[DeviceMessage]]:
        return self._all.union(*self._by_device.values())

    def _remove(self, sub: Subscriber[DeviceMessage]) -> None:
        self._all.discard(sub)
        for device in sub.device_ids or ():
            followers = self._by_device.get(device)
            if followers is not None:
                followers.discard(sub)
                if not followers:
                    del self._by_device[device]


class Channel(Generic[T]):
    """A broadcast of derived records (emitted windows, device events) with the hub's rules.

    Each subscriber gives a filter; publishing never waits (a full queue skips, a stalled
    subscriber is dropped).
    """

    def __init__(
        self, monotonic: Callable[[], float], *, max_queue: int = 1000, stall_timeout_s: float = 10.0
    ) -> None:
        self._monotonic = monotonic
        self.max_queue = max_queue
        self.stall_timeout_s = stall_timeout_s
        self._subscribers: set[Subscriber[T]] = set()
        self.dropped_total = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def subscribe(self, accept: Callable[[T], bool] | None = None) -> Subscriber[T]:
        """A new subscriber to the records ``accept`` takes (all, when None)."""
        sub: Subscriber[T] = Subscriber(None, self.max_queue, self._subscribers.discard, accept)
        self._subscribers.add(sub)
        return sub

    def publish(self, items: Iterable[T]) -> None:
        """Offer records to every subscriber that takes them; never waits."""
        if not self._subscribers:
            return
        now = self._monotonic()
        chosen = list(items)
        for sub in list(self._subscribers):
            accept = sub.accept
            for item in chosen:
                if accept is None or accept(item):
                    sub.offer(item, now, self.stall_timeout_s)
            if sub.dropped:
                self.dropped_total += 1
                self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for sub in list(self._subscribers):
            sub.drop()
        self._subscribers.clear()
