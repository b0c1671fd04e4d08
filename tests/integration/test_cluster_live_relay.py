"""An api's live relay on a real broker: once ``start`` returns, no event published after is missed.

The relay reads the live topic from its latest offset in a group of its own. Before the fix,
``start`` returned before the group was joined, so an event published in the next seconds (a
desired change right after `fleetstream up` started, which the simulator's devices follow) was
never relayed.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from fleetstream.adapters.bus.kafka import KafkaBus
from fleetstream.cluster.live import LivePublisher, LiveRelay
from fleetstream.domain.events import DeviceEvent

if TYPE_CHECKING:
    from fleetstream.engine.pipeline import Engine

    from ..servers import Tansu


class _Channel:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, items: list[Any]) -> None:
        self.published += items


def test_an_event_published_right_after_the_relay_started_is_relayed(module_tansu: Tansu) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    event = DeviceEvent(
        device, 3, 1_700_000_000_000_000, "desired_changed", {"patch": {"interval_s": 2}, "version": 1}, 0
    )
    notified: list[str] = []
    engine = SimpleNamespace(
        events=_Channel(),
        desired_changed=SimpleNamespace(notify=notified.append),
    )

    async def scenario() -> list[Any]:
        bus = KafkaBus(f"kafka://{module_tansu.bootstrap}", partitions=2)
        await bus.start()
        publisher = LivePublisher(bus, "w-test")
        await publisher.start()
        relay = LiveRelay(bus, cast("Engine", engine))
        try:
            await relay.start()
            publisher.stored([], [event])  # at once: the relay must already be in its group
            publisher.close()
            for _ in range(100):
                if engine.events.published:
                    break
                await asyncio.sleep(0.1)
            return list(engine.events.published)
        finally:
            await relay.stop()
            await bus.close()

    relayed = asyncio.run(scenario())

    assert [(e.device_id, e.seq, e.type, e.payload) for e in relayed] == [
        (device, 3, "desired_changed", {"patch": {"interval_s": 2}, "version": 1})
    ]
    assert notified == [device]
