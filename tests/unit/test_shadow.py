"""The device shadow: merge patches, delta, metadata, limits, the twin's fold, the engine's writer."""

from __future__ import annotations

import asyncio
import doctest
import re
from typing import Any

import pytest

from fleetstream.adapters import mqtt_shadow
from fleetstream.domain.batch import Batch
from fleetstream.domain.events import DESIRED_CHANGED, REPORTED_CHANGED, DeviceEvent, DeviceTwin
from fleetstream.domain.records import DeviceMessage, Reading
from fleetstream.domain.shadow import (
    MAX_BYTES,
    ShadowError,
    VersionMismatch,
    check_patch,
    delta,
    merge,
    merge_metadata,
    pick,
)
from fleetstream.domain.twin import TwinProcessor, TwinSettings
from fleetstream.engine import signals
from fleetstream.errors import InvalidReading, NotFound, PreconditionFailed
from fleetstream.simulator import shadow as sim_shadow
from fleetstream.testing import Harness

# -- merge patch (the examples of RFC 7396, appendix A) ----------------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_follows_rfc_7396(
    target: dict[str, Any], patch: dict[str, Any], result: dict[str, Any]
) -> None:
    before = repr(target)
    assert merge(target, patch) == result
    assert repr(target) == before  # never changed in place


def test_merge_copies_what_it_takes_from_the_patch() -> None:
    patch = {"n": {"list": [1, 2]}}
    out = merge({}, patch)
    patch["n"]["list"].append(3)
    assert out == {"n": {"list": [1, 2]}}


def test_metadata_marks_each_leaf_the_patch_sets() -> None:
    meta = merge_metadata({}, {"a": 1, "n": {"x": 1, "y": [1]}}, 10)
    assert meta == {"a": 10, "n": {"x": 10, "y": 10}}
    meta = merge_metadata(meta, {"n": {"x": None, "z": 2}, "a": {"now": "object"}}, 20)
    assert meta == {"a": {"now": 20}, "n": {"y": 10, "z": 20}}


def test_delta_keeps_the_desired_leaves_reported_does_not_hold() -> None:
    desired = {"interval_s": 5, "led": {"on": True, "rgb": [1, 2, 3]}, "mode": "eco", "empty": {}}
    assert delta(desired, {}) == {"interval_s": 5, "led": {"on": True, "rgb": [1, 2, 3]}, "mode": "eco"}
    reported = {"interval_s": 5.0, "led": {"on": 1, "rgb": [1, 2, 3]}, "mode": "eco", "extra": 1}
    assert delta(desired, reported) == {"led": {"on": True}}
    assert delta({"led": {"on": True}}, {"led": "broken"}) == {"led": {"on": True}}
    assert delta({"v": [1, True]}, {"v": [1, 1]}) == {"v": [1, True]}
    assert delta(desired, {**reported, "led": {"on": True, "rgb": [1, 2, 3]}}) == {}
    assert pick({"interval_s": 7, "led": {"on": 8, "rgb": 9}}, {"led": {"on": True}}) == {"led": {"on": 8}}


def test_patches_over_the_limits_are_refused_with_the_reason() -> None:
    deep: dict[str, Any] = {"x": 1}
    for _ in range(7):
        deep = {"n": deep}
    assert check_patch(deep) is deep  # 8 levels of objects: the limit
    with pytest.raises(ShadowError, match=re.escape("n.n.n.n.n.n.n.n: objects may nest at most 8 deep")):
        check_patch({"n": deep})
    with pytest.raises(ShadowError, match=f"at most {MAX_BYTES} bytes"):
        check_patch({"k": "é" * (MAX_BYTES // 2)})  # counted in UTF-8 bytes
    with pytest.raises(ShadowError, match="keys must have 1 to 128 characters"):
        check_patch({"k" * 129: 1})
    with pytest.raises(ShadowError, match="got null"):
        check_patch(None)


# -- the twin and its processor -----------------------------------------------------------------------


def _processor_with(device: str) -> TwinProcessor:
    p = TwinProcessor(TwinSettings())
    message = DeviceMessage(
        device, 1_000, "telemetry", "Thermostat", [Reading(device, 1_000, "temperature", 20.0)]
    )
    message.received_at, message.seq = 1_000, 1
    p.on_batch(Batch.from_messages([message]), now_us=1_000)
    return p


def test_updates_are_events_applied_to_the_twin_with_versions_and_times() -> None:
    p = _processor_with("d")
    before = p.get("d")
    assert before is not None
    version = before.version
    e1 = p.update_shadow("d", "desired", {"interval_s": 5, "led": {"on": True}}, now_us=2_000)
    assert e1 is not None
    assert (e1.type, e1.seq, e1.ts, e1.payload) == (
        DESIRED_CHANGED,
        version + 1,
        2_000,
        {"patch": {"interval_s": 5, "led": {"on": True}}, "version": 1},
    )
    e2 = p.update_shadow("d", "reported", {"interval_s": 5}, now_us=3_000, if_match=0)
    assert e2 is not None
    assert (e2.type, e2.seq, e2.payload["version"]) == (REPORTED_CHANGED, version + 2, 1)
    twin = p.get("d")
    assert twin is not None
    assert (twin.desired, twin.reported) == ({"interval_s": 5, "led": {"on": True}}, {"interval_s": 5})
    assert (twin.desired_meta, twin.reported_meta) == (
        {"interval_s": 2_000, "led": {"on": 2_000}},
        {"interval_s": 3_000},
    )
    assert (twin.desired_version, twin.reported_version, twin.version) == (1, 1, version + 2)
    assert p.take_dirty() == [twin]

    # a patch that changes nothing records nothing
    assert p.update_shadow("d", "reported", {"interval_s": 5.0}, now_us=4_000) is None
    assert twin.version == version + 2
    with pytest.raises(VersionMismatch) as caught:
        p.update_shadow("d", "desired", {"interval_s": 6}, now_us=5_000, if_match=0)
    assert (caught.value.expected, caught.value.current) == (0, 1)
    assert twin.desired["interval_s"] == 5
    with pytest.raises(ShadowError):
        p.update_shadow("d", "desired", ["x"], now_us=5_000)


def test_the_shadow_survives_a_snapshot_and_its_events_replay_to_it() -> None:
    p = _processor_with("d")
    events = [
        p.update_shadow("d", "desired", {"a": 1, "n": {"x": 1}}, now_us=2_000),
        p.update_shadow("d", "desired", {"a": None, "n": {"y": 2}}, now_us=3_000),
        p.update_shadow("d", "reported", {"n": {"x": 1, "y": 2}}, now_us=4_000),
    ]
    twin = p.get("d")
    assert twin is not None
    restored = TwinProcessor.restore(TwinSettings(), p.snapshot(), [DeviceTwin.from_state(twin.to_state())])
    again = restored.get("d")
    assert again == twin
    assert again is not None
    assert delta(again.desired, again.reported) == {}
    # a restored processor goes on numbering where it was
    e = restored.update_shadow("d", "desired", {"b": True}, now_us=5_000, if_match=2)
    assert e is not None
    assert (e.seq, e.payload["version"]) == (twin.version + 1, 3)

    # as of a time: only the events up to it (the fold of the event log, as ?as_of= does)
    log = [DeviceEvent.from_dict(x.as_dict()) for x in events if x is not None]
    as_of_3000 = DeviceTwin.replay("d", [x for x in log if x.ts <= 3_000], [])
    assert (as_of_3000.desired, as_of_3000.reported) == ({"n": {"x": 1, "y": 2}}, {})
    assert as_of_3000.desired_meta == {"n": {"x": 2_000, "y": 3_000}}
    full = DeviceTwin.replay("d", log, [])
    assert (full.desired, full.reported, full.desired_version) == (twin.desired, twin.reported, 2)


def test_a_twin_without_a_shadow_stores_none_and_reads_back_with_an_empty_one() -> None:
    state = DeviceTwin("old").to_state()
    assert "shadow" not in state  # as twins stored before the shadow existed
    twin = DeviceTwin.from_state(state)
    assert (twin.desired, twin.reported, twin.desired_version) == ({}, {}, 0)
    assert twin.to_state() == state


def test_twins_share_the_empty_documents_until_patched() -> None:
    a, b = DeviceTwin("a"), DeviceTwin("b")
    assert a.desired is b.desired
    assert a.reported_meta is b.reported_meta
    a.patch_shadow("desired", {"x": 1}, 5, 1)
    assert (a.desired, b.desired, b.desired_meta) == ({"x": 1}, {}, {})


def test_doctests_of_the_shadow_adapters() -> None:
    for module in (mqtt_shadow, sim_shadow, signals):
        failed, attempted = doctest.testmod(module)
        assert (failed, attempted > 0) == (0, True), module.__name__


def test_reporting_topics() -> None:
    assert mqtt_shadow.reporting_device("devices/a:b@c/reported") == "a:b@c"
    for topic in ("devices//reported", "devices/a/b/reported", "other/a/reported", "devices/a/desired"):
        assert mqtt_shadow.reporting_device(topic) is None
    assert mqtt_shadow.desired_topic("t-1") == "devices/t-1/desired"


# -- the engine: one writer, durable before it answers -----------------------------------------------


def _reading(device: str, second: int) -> dict[str, Any]:
    return {
        "device_id": device,
        "ts": f"2023-11-14T22:13:{second:02d}Z",
        "sensor": "temperature",
        "value": 1.0,
    }


def _crashed_copy(h: Harness) -> Harness:
    """A new process on what ``h``'s store holds now (``h`` never stops cleanly before it)."""
    h2 = Harness()
    h2.store.messages = list(h.store.messages)
    h2.store.twins = {k: DeviceTwin.from_state(v.to_state()) for k, v in h.store.twins.items()}
    h2.store.events = dict(h.store.events)
    h2.store.saved = h.store.saved
    return h2


def test_engine_updates_are_durable_and_survive_a_crash() -> None:
    async def scenario() -> None:
        h = Harness()
        await h.runtime.start()
        engine = h.runtime.engine
        await h.post([_reading("a", 0)])
        with pytest.raises(NotFound):
            await engine.update_shadow("nobody", "desired", {"x": 1})
        # "a" is new since the last checkpoint: a replay would register it afresh, so a checkpoint
        assert h.store.saved is None
        twin, event = await engine.update_shadow("a", "desired", {"interval_s": 5})
        assert event is not None
        assert (twin.desired, h.store.events[("a", event.seq)].type) == ({"interval_s": 5}, DESIRED_CHANGED)
        first = h.store.saved
        assert first is not None
        assert h.store.twins["a"].desired == {"interval_s": 5}
        with pytest.raises(PreconditionFailed) as caught:
            await engine.update_shadow("a", "desired", {"interval_s": 6}, if_match=0)
        assert caught.value.details == {"version": 1, "expected": 0}
        with pytest.raises(InvalidReading, match="desired: a shadow update must be a JSON object"):
            await engine.update_shadow("a", "desired", 5)
        await h.post([_reading("a", 1)])  # telemetry after the change replays on top of it
        # "a" is known to the checkpoint now: the twin is stored, no checkpoint is taken
        _, event = await engine.update_shadow("a", "reported", {"interval_s": 5})
        assert event is not None
        assert h.store.saved is first
        assert h.store.twins["a"].reported == {"interval_s": 5}
        assert ("a", event.seq) in h.store.events
        await h.post([_reading("a", 2), _reading("b", 2)])

        h2 = _crashed_copy(h)
        await h.runtime.stop()
        async with h2:
            after = h2.runtime.engine.processors.twins.get("a")
            assert after is not None
            assert (after.desired, after.reported, after.readings) == (
                {"interval_s": 5},
                {"interval_s": 5},
                3,
            )
            assert (after.desired_version, after.reported_version) == (1, 1)
            replayed_b = h2.runtime.engine.processors.twins.get("b")
            assert replayed_b is not None
            assert replayed_b.readings == 1
            version = after.version
            _, event = await h2.runtime.engine.update_shadow("a", "desired", {"interval_s": 7}, if_match=1)
            assert event is not None
            assert (event.payload["version"], event.seq) == (2, version + 1)

    asyncio.run(scenario())


def test_a_desired_change_wakes_only_the_waiters_of_its_device() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            await h.post([_reading(d, 0) for d in ("a", "b")])
            engine = h.runtime.engine
            a = [engine.desired_changed.register("a") for _ in range(3)]
            b = engine.desired_changed.register("b")
            await engine.update_shadow("a", "reported", {"x": 1})  # reported: no one is woken
            assert not any(f.done() for f in [*a, b])
            await engine.update_shadow("a", "desired", {"x": 1})
            assert all(f.done() for f in a)
            assert not b.done()
            assert engine.desired_changed.waiting("a") == 0
            engine.desired_changed.discard("b", b)
            assert engine.desired_changed.waiting("b") == 0

    asyncio.run(scenario())


def test_concurrent_updates_share_checkpoints_and_keep_their_order() -> None:
    async def scenario() -> None:
        async with Harness() as h:
            await h.post([_reading(d, 0) for d in ("a", "b", "c")])
            engine = h.runtime.engine
            sub = engine.events.subscribe(lambda e: e.type == DESIRED_CHANGED)
            updates = [
                engine.update_shadow(d, "desired", {"n": i}) for i in range(5) for d in ("a", "b", "c")
            ]
            results = await asyncio.gather(*updates)
            assert [ev.payload["version"] for _, ev in results if ev is not None] == [
                i for i in range(1, 6) for _ in range(3)
            ]
            seen = [sub.queue.get_nowait() for _ in range(15)]
            assert [(e.device_id, e.payload["patch"]["n"]) for e in seen if e.device_id == "a"] == [
                ("a", i) for i in range(5)
            ]
            twin = engine.processors.twins.get("b")
            assert twin is not None
            assert twin.desired == {"n": 4}
            assert h.store.twins["b"].desired == {"n": 4}

    asyncio.run(scenario())
