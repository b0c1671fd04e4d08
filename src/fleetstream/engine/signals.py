"""Wake the coroutines waiting for one key (a device's desired state) without a broadcast.

Long-polling devices each wait for their own device. A subscription per waiter
to the device-event channel would make every device event cost one filter call
per waiting device; here a change costs a dict lookup, whatever the number of waiters.
"""

from __future__ import annotations

import asyncio


class KeyedSignal:
    """Futures per key, resolved by :meth:`notify`.

    Register before reading the state you wait on, so a change in between is not missed.

    Example:
        >>> async def demo() -> bool:
        ...     signal = KeyedSignal()
        ...     waiter = signal.register("d1")
        ...     signal.notify("d1")
        ...     return waiter.done() and not signal.waiting("d1")
        >>> asyncio.run(demo())
        True
    """

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Future[None]]] = {}

    def register(self, key: str) -> asyncio.Future[None]:
        """A future resolved at the next :meth:`notify` of ``key`` (call :meth:`discard` when done)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, set()).add(future)
        return future

    def discard(self, key: str, future: asyncio.Future[None]) -> None:
        """Stop waiting (a timed-out or finished waiter)."""
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiting[key]

    def notify(self, key: str) -> None:
        """Wake everyone waiting on ``key``."""
        for future in self._waiting.pop(key, ()):
            if not future.done():
                future.set_result(None)

    def waiting(self, key: str) -> int:
        """How many wait on ``key``."""
        return len(self._waiting.get(key, ()))
