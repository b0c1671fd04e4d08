"""The stream processors of one partition, driven together: windows, twins and live statistics.

:class:`StreamProcessors` feeds each durable batch, in log order, to the pure domain objects
and gathers what they emit into one :class:`~fleetstream.ports.Derived` for the store. Its
state (with the log position it reflects) is one checkpoint: restore it and replay the log
after that position, and the processors are where an uninterrupted run would be. Twins are not
in the checkpoint blob: each changed twin is stored on its own (``take_dirty``), with the log
position it reflects, so a twin stored after the checkpoint simply skips what it already saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from fleetstream.config import StreamSettings
from fleetstream.domain.alerts import AlertChange
from fleetstream.domain.batch import Batch
from fleetstream.domain.geometry import Zone
from fleetstream.domain.rulebook import Rule
from fleetstream.domain.rules import RuleTransition
from fleetstream.domain.stats import LiveStats
from fleetstream.domain.twin import DeviceTwin, TwinProcessor, TwinSettings
from fleetstream.domain.windows import WindowOutput, WindowProcessor, WindowSettings
from fleetstream.engine.alerting import RuleStage
from fleetstream.engine.prediction import PredictionStage
from fleetstream.ports import Derived

_S = 1_000_000
STATE_FORMAT = 2


def window_settings(stream: StreamSettings) -> WindowSettings:
    """The window processor's settings from the user's."""
    return WindowSettings(
        sizes_us=stream.window_sizes_us,
        out_of_orderness_us=round(stream.out_of_orderness_s * _S),
        allowed_lateness_us=round(stream.allowed_lateness_s * _S),
        idle_timeout_us=round(stream.idle_timeout_s * _S),
        max_ahead_us=round(stream.max_ahead_s * _S),
    )


def twin_settings(stream: StreamSettings) -> TwinSettings:
    """The twin processor's settings from the user's."""
    return TwinSettings(
        idle_after_us=round(stream.idle_after_s * _S),
        offline_after_us=round(stream.offline_after_s * _S),
        evict_after_us=round(stream.evict_after_s * _S),
        idle_timeout_us=round(stream.idle_timeout_s * _S),
        max_ahead_us=round(stream.max_ahead_s * _S),
    )


class StreamProcessors:
    """Windows, twins and live stats of one partition; see the module docstring."""

    def __init__(self, stream: StreamSettings) -> None:
        self.stream = stream
        self.windows = WindowProcessor(window_settings(stream))
        self.twins = TwinProcessor(twin_settings(stream))
        self.stats = LiveStats()
        self.rules = RuleStage()
        self.prediction = PredictionStage()  # off until the engine gives it a model
        self.alert_changes: list[AlertChange] = []  # taken by the engine for live subscribers
        self.position = 0  # log position of the last record processed
        # a cluster worker's counts of its partition, checkpointed with it (so a takeover or a
        # restart goes on counting where the checkpoint was); the embedded engine keeps its own
        self.duplicates_total = 0  # re-sent readings and events dropped by dedup
        self.messages_total = 0  # device messages stored (after dedup)

    def on_batch(self, batch: Batch, now_us: int) -> Derived:
        """Process a durable batch (rows in log order, then its reading-less messages)."""
        out = Derived()
        predicted: list[RuleTransition] = []
        if len(batch):
            self.stats.add(batch.device_id, batch.sensor, batch.value, batch.ts)
            seq = batch.seq or [0] * len(batch)
            predicted = self._add_windows(
                out,
                self.windows.on_batch(
                    batch.device_id, batch.sensor, batch.value, batch.ts, batch.received_at, seq, now_us
                ),
            )
        ahead = self.rules.ahead(batch, self.twins, self.position)
        rule_events = self.rules.before_batch(self.twins, self.position)
        out.events = rule_events + self.twins.on_batch(batch, now_us)
        out.events += self.rules.on_batch(batch, self.twins, ahead)
        last = max(batch.seq[-1] if batch.seq else 0, batch.events[-1].seq if batch.events else 0)
        self.position = max(self.position, last)
        if predicted:
            out.events += self.rules.on_predictions(predicted, self.twins, self.position, ahead)
        self._add_alerts(out)
        return out

    def on_timer(self, now_us: int) -> Derived:
        """Let wall-clock time pass: idle windows close, silent devices change status, twins leave memory."""
        out = Derived()
        predicted = self._add_windows(out, self.windows.on_timer(now_us))
        events, evicted = self.twins.on_timer(now_us)
        out.events = events + self.rules.on_time(self.twins, self.position)
        if predicted:
            out.events += self.rules.on_predictions(predicted, self.twins, self.position, frozenset())
        out.twins = evicted
        self._add_alerts(out)
        return out

    def set_rules(self, rules: list[Rule], zones: list[Zone], now_us: int | None = None) -> Derived:
        """Set the rules and zones: before a restore (``now_us`` None), or while running."""
        if now_us is None:
            self.rules.configure(rules, zones)
            return Derived()
        out = Derived(events=self.rules.update(rules, zones, self.twins, now_us, self.position))
        self._add_alerts(out)
        return out

    def _add_alerts(self, out: Derived) -> None:
        changes = self.rules.take_changes()
        if changes:
            out.alerts += [c.alert for c in changes]
            self.alert_changes += changes

    def missing(self, batch: Batch) -> set[str]:
        """Devices of the batch whose twin must be loaded from the store first."""
        found = self.twins.missing(batch.device_id)  # no work while no twin has left memory
        if batch.events:
            found |= self.twins.missing([e.device_id for e in batch.events])
        return found

    def load(self, twins: Iterable[DeviceTwin]) -> None:
        """Put stored twins back in memory."""
        self.twins.load(twins)

    @property
    def late_total(self) -> dict[str, int]:
        """sensor → readings too late for their window (beyond the allowed lateness)."""
        return self.windows.late_total

    def snapshot(self) -> bytes:
        """Everything but the twins' own states (stored through :meth:`take_dirty`), as bytes."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "position": self.position,
            "windows": self.windows.snapshot(),
            "twins": self.twins.snapshot(),
            "stats": self.stats.to_state(),
            "rules": self.rules.snapshot(),
            "prediction": self.prediction.snapshot(),
            "counts": {"duplicates_total": self.duplicates_total, "messages_total": self.messages_total},
        }
        return msgspec.msgpack.encode(state)

    def take_dirty(self) -> list[DeviceTwin]:
        """Twins changed since the last call, to store beside a checkpoint."""
        return self.twins.take_dirty()

    def restore(self, blob: bytes, twins: Iterable[DeviceTwin]) -> None:
        """Resume from a :meth:`snapshot` and the stored twins it names as resident."""
        state = msgspec.msgpack.decode(blob)
        if state.get("format") != STATE_FORMAT:
            msg = f"checkpoint format {state.get('format')} is not {STATE_FORMAT}"
            raise ValueError(msg)
        self.position = int(state["position"])
        self.windows = WindowProcessor.restore(window_settings(self.stream), state["windows"])
        self.twins = TwinProcessor.restore(twin_settings(self.stream), state["twins"], twins)
        self.stats = LiveStats.from_state(state["stats"])
        if "rules" in state:  # checkpoints written before rules existed have none
            self.rules.restore(state["rules"])
        self.prediction.restore(state.get("prediction"))  # None: written before prediction ran
        counts = state.get("counts", {})  # none in checkpoints written before they were kept
        self.duplicates_total = int(counts.get("duplicates_total", 0))
        self.messages_total = int(counts.get("messages_total", 0))

    @staticmethod
    def resident_ids(blob: bytes) -> list[str]:
        """Device ids whose twins were in memory when the snapshot was taken."""
        state = msgspec.msgpack.decode(blob)
        return list(state["twins"].get("resident", []))

    def _add_windows(self, out: Derived, result: WindowOutput) -> list[RuleTransition]:
        """Add emitted windows to ``out``; the predictor's transitions for the closed ones."""
        out.windows += result.windows
        out.late.extend(result.late)
        return self.prediction.on_windows(result.windows) if result.windows else []
