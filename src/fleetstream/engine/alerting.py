"""The rules stage of the stream processors: rule book → alerts → device events.

:class:`RuleStage` feeds a batch's columns to the rule book, turns the rule
transitions into :class:`~fleetstream.domain.alerts.Alert` records through an
:class:`~fleetstream.domain.alerts.AlertBook`, and appends a device event per
transition (``alert_opened``, ``alert_escalated``, ``alert_cleared``) and per zone
crossing (``zone_entered``, ``zone_left``) to the device's twin, so they are in the
twin's history and in the event log.

Deadlines (a duration elapsing, an offline timer, an escalation) fire at the start
of each batch for the partition time reached before it, and on the engine's timer:
the same log gives the same events at the same places in each device's history
whether it is processed live or replayed after a restart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fleetstream.domain.alerts import AlertBook, AlertChange
from fleetstream.domain.batch import Batch
from fleetstream.domain.geometry import Zone
from fleetstream.domain.rulebook import Rule, RuleBook, RuleOutput
from fleetstream.domain.rules import RuleTransition
from fleetstream.domain.twin import DeviceEvent, TwinProcessor

ALERT_EVENTS = {"opened": "alert_opened", "escalated": "alert_escalated", "cleared": "alert_cleared"}
ZONE_ENTERED, ZONE_LEFT = "zone_entered", "zone_left"


class RuleStage:
    """Rules, open alerts and the events they add to twins; see the module docstring."""

    def __init__(self) -> None:
        self.book = RuleBook()
        self.alerts = AlertBook()
        self.rules: dict[str, Rule] = {}
        self.zones: dict[str, Zone] = {}
        self.changes: list[AlertChange] = []  # taken by the engine (live stream, webhooks)
        self.replaying = False  # set by the engine while it replays the log after a restart

    @property
    def idle(self) -> bool:
        """No rule, no zone and no open alert: nothing to evaluate."""
        return not self.rules and not self.zones and not len(self.alerts)

    def configure(self, rules: Iterable[Rule], zones: Iterable[Zone]) -> None:
        """Set the rules and zones before any state is restored (at start)."""
        self.rules = {r.id: r for r in rules}
        self.zones = {z.id: z for z in zones}
        self.book = RuleBook(self.rules.values(), self.zones.values())

    def update(
        self, rules: Iterable[Rule], zones: Iterable[Zone], twins: TwinProcessor, now_us: int, position: int
    ) -> list[DeviceEvent]:
        """Swap the rules and zones while running (alerts of removed or redefined rules clear)."""
        rules, zones = list(rules), list(zones)
        output = self.book.update(rules, zones, now_us)
        events = self._emit(output, twins, position, frozenset())
        self.rules = {r.id: r for r in rules}
        self.zones = {z.id: z for z in zones}
        return events

    def before_batch(self, twins: TwinProcessor, position: int) -> list[DeviceEvent]:
        """Fire the deadlines due by the partition time reached so far (before a batch is applied)."""
        pt = twins.partition_time
        if pt is None or self.idle:
            return []
        return self._emit(self.book.on_time(pt), twins, position, frozenset())

    def ahead(self, batch: Batch, twins: TwinProcessor, position: int) -> frozenset[str]:
        """Devices of the batch whose twin was stored after having seen this part of the log.

        A replay after a crash gives such a twin nothing new; the events the rules emit for
        it were appended before the crash, so they are not appended again. Only a replay can
        meet such a twin, so live batches are not searched.
        """
        if self.idle or not self.replaying:
            return frozenset()
        found = set()
        for device in set(batch.device_id):
            twin = twins.get(device)
            if twin is not None and twin.position > position:
                found.add(device)
        return frozenset(found)

    def on_batch(self, batch: Batch, twins: TwinProcessor, ahead: frozenset[str]) -> list[DeviceEvent]:
        """Evaluate the rules over the batch's rows (after the twins took them)."""
        if not len(batch) or self.idle:
            return []
        output = self.book.on_batch(batch.device_id, batch.device_type, batch.sensor, batch.value, batch.ts)
        if not output.transitions and not output.crossings:
            return []
        # Each event's position is its device's last record in the batch: found from the end,
        # stopping once every device that has an event is found (usually a few of many).
        wanted = {t.device_id for t in output.transitions} | {c.device_id for c in output.crossings}
        last: dict[str, int] = {}
        devices, seqs = batch.device_id, batch.seq
        for i in range(len(devices) - 1, -1, -1):
            device = devices[i]
            if device in wanted and device not in last:
                last[device] = seqs[i]
                if len(last) == len(wanted):
                    break
        return self._emit(output, twins, last, ahead)

    def on_predictions(
        self, transitions: list[RuleTransition], twins: TwinProcessor, position: int, ahead: frozenset[str]
    ) -> list[DeviceEvent]:
        """Open and clear ``failure_predicted`` alerts (the predictor's transitions) like a rule's.

        In a replay, a twin stored after this point of the log already has these events (at its
        position too: twins are stored after a whole batch, so one stored at the batch's last
        position has what the batch's windows made).
        """
        if self.replaying:
            ahead = ahead | {
                t.device_id
                for t in transitions
                if (twin := twins.get(t.device_id)) is not None and twin.position >= position
            }
        return self._emit(RuleOutput(transitions=transitions), twins, position, ahead)

    def on_time(self, twins: TwinProcessor, position: int) -> list[DeviceEvent]:
        """Deadlines due by the partition time (which the twins move on with the wall clock when quiet)."""
        return self.before_batch(twins, position)

    def _emit(
        self,
        output: RuleOutput,
        twins: TwinProcessor,
        position: int | Mapping[str, int],
        ahead: frozenset[str],
    ) -> list[DeviceEvent]:
        events: list[DeviceEvent] = []

        def at(device: str) -> int:
            return position if isinstance(position, int) else position.get(device, 0)

        # A crossing before the alerts it causes: a zone rule's alert follows the tracker's move.
        for c in output.crossings:
            if c.device_id in ahead:
                continue
            kind = ZONE_ENTERED if c.entered else ZONE_LEFT
            zone = self.zones.get(c.zone_id)
            payload: dict[str, Any] = {
                "zone_id": c.zone_id,
                "zone": zone.name if zone else c.zone_id,
                "lat": c.lat,
                "lon": c.lon,
            }
            event = twins.append(c.device_id, kind, c.ts, payload, at(c.device_id))
            if event is not None:
                events.append(event)
        names = {rid: r.name for rid, r in self.rules.items()}
        changes = self.alerts.on_transitions(output.transitions, names)
        self.changes += changes
        for change in changes:
            a = change.alert
            if a.device_id in ahead:
                continue
            payload = {
                "alert_id": a.id,
                "rule_id": a.rule_id,
                "severity": a.severity,
                "first_value": a.first_value,
                "last_value": a.last_value,
                "message": a.message,
            }
            event = twins.append(
                a.device_id, ALERT_EVENTS[change.kind], a.updated_at, payload, at(a.device_id)
            )
            if event is not None:
                events.append(event)
        return events

    def take_changes(self) -> list[AlertChange]:
        """Alert changes since the last call."""
        changes, self.changes = self.changes, []
        return changes

    def snapshot(self) -> dict[str, Any]:
        """Builtins-only state: the rule book's and the open alerts."""
        return {"book": self.book.snapshot(), "alerts": self.alerts.snapshot()}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Resume from a :meth:`snapshot` (rules and zones configured first)."""
        self.book.restore(state["book"])
        self.alerts = AlertBook.restore(state["alerts"])
