"""A processor checkpointed while no window was open restores, and goes on windowing."""

from __future__ import annotations

import msgspec

from fleetstream.domain.windows import WindowProcessor, WindowSettings

S = 1_000_000
T0 = 1_699_999_980 * S  # a whole minute since the epoch


def test_a_snapshot_without_open_windows_restores_and_the_processor_goes_on() -> None:
    p = WindowProcessor(WindowSettings())
    p.on_batch(["d1"], ["temp"], [1.0], [T0 + S], [T0 + S], [1], now_us=T0 + S)
    p.on_timer(T0 + 10_000 * S)
    p.on_timer(T0 + 20_000 * S)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(p.snapshot()))  # as the engine stores it
    assert state["windows"]["start"]["shape"] == [0]

    restored = WindowProcessor.restore(WindowSettings(), state)

    assert restored.open_windows() == []
    t = T0 + 30_000 * S
    restored.on_batch(["d1"], ["temp"], [2.5], [t], [t], [2], now_us=t)
    assert sorted({(w.device_id, w.sensor, w.count) for w in restored.open_windows()}) == [
        ("*", "temp", 1),
        ("d1", "temp", 1),
    ]
