"""The failure predictor in the engine: closed windows in, risk in the twin, failure_predicted alerts."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from fleetstream.api.routes.models import failure_risk
from fleetstream.config import Settings
from fleetstream.domain.features import FeatureExtractor
from fleetstream.domain.federated import LogisticModel, ModelRound
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.engine.prediction import default_model
from fleetstream.runtime import Runtime
from fleetstream.testing import Harness, InMemoryStore

S = 1_000_000
BASE_S = 1_717_243_200  # 2024-06-01T12:00:00Z, a whole minute
NORMAL = {"temperature": 50.0, "cpu_usage": 35.0, "fan_rpm": 2100.0, "voltage": 12.02}
FAILING = {"temperature": 60.0, "cpu_usage": 48.0, "fan_rpm": 1365.0, "voltage": 12.02}  # fan at 65 %
NAMES = FeatureExtractor().names


def settings(**predictor: Any) -> Settings:
    """10 s windows closing as soon as event time passes their end; the predictor reads them."""
    return Settings(
        simulator={"enabled": False},
        stream={"windows": "10s", "out_of_orderness_s": 0},
        predictor={"window_s": 10, **predictor},
    )


def temperature_model(round_: int, midpoint: float) -> ModelRound:
    """risk = sigmoid(temperature level - midpoint): easy to compute by hand."""
    coef = [1.0 if name == "temperature_level" else 0.0 for name in NAMES]
    model = LogisticModel(NAMES, [0.0] * len(NAMES), [1.0] * len(NAMES), coef, -midpoint)
    return ModelRound(round_, f"test-r{round_}", model.to_dict(), 1, 10, {"threshold": 0.5}, 0)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def readings(device: str, first_s: int, seconds: int, values: dict[str, float]) -> list[dict[str, Any]]:
    return [
        {
            "device_id": device,
            "ts": datetime.fromtimestamp(BASE_S + s, UTC).isoformat(),
            "sensor": sensor,
            "value": value,
        }
        for s in range(first_s, first_s + seconds)
        for sensor, value in values.items()
    ]


async def feed(h: Harness, device: str, first_s: int, seconds: int, values: dict[str, float]) -> None:
    for s in range(first_s, first_s + seconds):
        await h.post(readings(device, s, 1, values))


def alert_kinds(store: InMemoryStore, device: str) -> list[tuple[int, str]]:
    return [
        (e.ts, e.type)
        for (d, _), e in sorted(store.events.items())
        if d == device and e.type.startswith("alert_")
    ]


def test_closed_windows_score_the_device_and_open_then_clear_the_alert_and_a_restart_keeps_it() -> None:
    async def scenario() -> None:
        h = Harness(settings(), start_us=(BASE_S + 200) * S)
        await h.store.save_model_round(temperature_model(1, 70.0))
        async with h:
            engine = h.runtime.engine
            assert engine.models.choice is not None
            assert engine.models.choice.round == 1
            await feed(h, "host-1", 0, 30, {**NORMAL, "temperature": 60.0})  # windows 0-10, 10-20 closed
            risk = await failure_risk(engine, "host-1")
            assert risk == {
                "score": round(sigmoid(-10.0), 4),
                "model_round": 1,
                "model_version": "test-r1",
                "at": us_to_iso((BASE_S + 20) * S),
            }
            await feed(h, "host-1", 30, 11, {**NORMAL, "temperature": 75.0})  # closes 20-30 and 30-40
            assert (await failure_risk(engine, "host-1"))["score"] == round(sigmoid(5.0), 4)  # type: ignore[index]
            await engine.flush()
            opened = f"failure_predicted:host-1:{(BASE_S + 40) * S}"
            assert list(h.store.alerts) == [opened]
            assert h.store.alerts[opened].state == "active"
            assert alert_kinds(h.store, "host-1") == [((BASE_S + 40) * S, "alert_opened")]
            # The risk is not an event: the twin's version counts only the alert.
            events_before = dict(h.store.events)
        # A restart on the same store: the open alert and the risk are where they were.
        again = Runtime(settings(), store=h.store, clock=h.clock)
        await again.start()
        try:
            stage = again.engine.processors.prediction
            assert stage.predictor is not None
            assert stage.predictor.active() == {"host-1": (BASE_S + 40) * S}
            assert (await failure_risk(again.engine, "host-1"))["score"] == round(sigmoid(5.0), 4)  # type: ignore[index]
            assert h.store.events == events_before
            # Back to normal: the risk falls below clear_at (0.5 x 0.6) and the alert clears.
            for s in range(41, 61):
                body = _json(readings("host-1", s, 1, {**NORMAL, "temperature": 60.0}))
                await again.gateway.ingest(body, "application/json")
            await again.engine.flush()
            assert h.store.alerts[opened].state == "cleared"
            assert alert_kinds(h.store, "host-1") == [
                ((BASE_S + 40) * S, "alert_opened"),
                ((BASE_S + 50) * S, "alert_cleared"),
            ]
        finally:
            await again.stop()

    asyncio.run(scenario())


def _json(body: Any) -> bytes:
    import msgspec

    return msgspec.json.encode(body)


@pytest.mark.parametrize("twins_stored_ahead", [False, True])
def test_a_crash_replays_to_the_same_prediction_alerts_and_events(twins_stored_ahead: bool) -> None:
    async def scenario() -> None:
        h = Harness(settings(), start_us=(BASE_S + 200) * S)
        await h.store.save_model_round(temperature_model(1, 70.0))
        await h.runtime.start()
        engine = h.runtime.engine
        await feed(h, "host-1", 0, 21, {**NORMAL, "temperature": 60.0})
        await engine.flush()  # the checkpoint: before the alert
        # Window 20-30 has one reading at 60 and nine at 75 (mean 73.5): it opens at 30; window
        # 40-50 has one at 75 and nine at 60 (mean 61.5): it clears at 50.
        await feed(h, "host-1", 21, 20, {**NORMAL, "temperature": 75.0})
        await feed(h, "host-1", 41, 9, {**NORMAL, "temperature": 60.0})
        await feed(h, "pump", 50, 1, {"pressure": 2.0})  # another device's reading closes 40-50
        if twins_stored_ahead:
            engine._twins_stored = float("-inf")
            await engine.store_twins()
        await engine._flush(checkpoint=False)
        events = dict(h.store.events)
        alerts = {k: a.to_state() for k, a in h.store.alerts.items()}
        assert alert_kinds(h.store, "host-1") == [
            ((BASE_S + 30) * S, "alert_opened"),
            ((BASE_S + 50) * S, "alert_cleared"),
        ]
        for task in (engine._task, engine._flusher):  # the crash: nothing more is stored
            assert task is not None
            task.cancel()
        again = Runtime(settings(), store=h.store, clock=h.clock)
        await again.start()
        try:
            assert again.engine.replayed > 0
            assert h.store.events == events
            assert {k: a.to_state() for k, a in h.store.alerts.items()} == alerts
            assert (await failure_risk(again.engine, "host-1"))["score"] == round(sigmoid(-8.5), 4)  # type: ignore[index]
        finally:
            await again.stop()

    asyncio.run(scenario())


def test_a_new_registry_round_is_used_without_a_restart() -> None:
    async def scenario() -> None:
        h = Harness(settings(), start_us=(BASE_S + 200) * S)
        await h.store.save_model_round(temperature_model(1, 70.0))
        async with h:
            engine = h.runtime.engine
            await feed(h, "host-1", 0, 21, {**NORMAL, "temperature": 60.0})
            assert (await failure_risk(engine, "host-1"))["score"] == round(sigmoid(-10.0), 4)  # type: ignore[index]
            assert not await engine.models.reload(force=True)  # nothing newer
            await h.store.save_model_round(temperature_model(2, 55.0))
            assert await engine.models.reload(force=True)
            await feed(h, "host-1", 21, 10, {**NORMAL, "temperature": 60.0})  # closes 20-30
            risk = await failure_risk(engine, "host-1")
            assert risk is not None
            assert (risk["score"], risk["model_round"]) == (round(sigmoid(5.0), 4), 2)
            assert engine.models.status()["model"] == {"round": 2, "version": "test-r2"}

    asyncio.run(scenario())


def test_the_shipped_model_scores_a_failing_host_above_its_threshold() -> None:
    shipped = default_model()
    assert shipped.round is None
    assert 0 < shipped.threshold < 1

    async def scenario() -> None:
        async with Harness(settings(), start_us=(BASE_S + 400) * S) as h:
            engine = h.runtime.engine
            assert engine.models.status()["model"] == {"round": None, "version": shipped.version}
            await feed(h, "host-1", 0, 121, NORMAL)  # 12 normal windows: the baseline
            calm = await failure_risk(engine, "host-1")
            assert calm is not None
            assert calm["score"] < 0.1
            await feed(h, "host-1", 121, 20, FAILING)
            hot = await failure_risk(engine, "host-1")
            assert hot is not None
            assert hot["score"] >= shipped.threshold
            await engine.flush()
            assert [a.rule_id for a in h.store.alerts.values()] == ["failure_predicted"]
            assert await failure_risk(engine, "nobody") is None

    asyncio.run(scenario())


def test_the_predictor_can_be_turned_off() -> None:
    async def scenario() -> None:
        async with Harness(settings(enabled=False), start_us=(BASE_S + 200) * S) as h:
            engine = h.runtime.engine
            await feed(h, "host-1", 0, 21, FAILING)
            assert await failure_risk(engine, "host-1") is None
            assert engine.models.status()["enabled"] is False
            assert engine.processors.snapshot()  # a checkpoint without prediction state is fine

    asyncio.run(scenario())


def test_without_windows_of_its_size_the_predictor_is_off() -> None:
    async def scenario() -> None:
        plain = Settings(simulator={"enabled": False}, stream={"windows": "10s"})  # predictor reads 1 min
        async with Harness(plain, start_us=(BASE_S + 200) * S) as h:
            assert not h.runtime.engine.models.enabled
            assert h.runtime.engine.processors.prediction.predictor is None

    asyncio.run(scenario())


def test_a_round_the_predictor_cannot_use_is_skipped_with_the_one_before_it_used() -> None:
    async def scenario() -> None:
        h = Harness(settings(), start_us=(BASE_S + 200) * S)
        await h.store.save_model_round(temperature_model(1, 70.0))
        odd = LogisticModel(("x",), [0.0], [1.0], [1.0], 0.0)
        await h.store.save_model_round(ModelRound(2, "other-features", odd.to_dict(), 1, 1, {}, 0))
        bad = temperature_model(3, 70.0)
        await h.store.save_model_round(ModelRound(3, "zero", bad.params, 1, 1, {"threshold": 0.0}, 0))
        async with h:
            assert h.runtime.engine.models.status()["model"] == {"round": 1, "version": "test-r1"}

    asyncio.run(scenario())
