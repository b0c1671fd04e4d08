"""Rules, zones and alerts as the API manages them, applied to the running engine.

Definitions live in the store (tables ``rules`` and ``zones``) and are loaded when the
engine starts, before its checkpoint is restored. A change through the API is checked
(parsed, and the whole set built once), stored, then swapped into the processors at
once: the event loop runs it between two batches, so the next batch already sees it.

An acknowledgement is not in the log: it is stored at once, and after a restart the
open alerts take it back from the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fleetstream.domain.alerts import ACKED, Alert, AlertChange, AlertNotOpen
from fleetstream.domain.geometry import Zone
from fleetstream.domain.rulebook import Rule, RuleBook, parse_rule, parse_zone
from fleetstream.errors import Conflict, InvalidDefinition, NotFound
from fleetstream.ports import Derived

if TYPE_CHECKING:
    from fleetstream.engine.pipeline import Engine
    from fleetstream.engine.processors import StreamProcessors

log = logging.getLogger(__name__)

RULES, ZONES = "rules", "zones"
_WEBHOOK_KINDS = frozenset(("opened", "escalated", "cleared"))


class RuleControl:
    """The engine's rule and zone definitions and alert actions; see the module docstring."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.defs: dict[str, dict[str, dict[str, Any]]] = {RULES: {}, ZONES: {}}
        self._rules: list[Rule] = []
        self._zones: list[Zone] = []
        self._hooks: dict[str, str] = {}  # rule id → webhook URL
        self._lock = asyncio.Lock()

    # -- start -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the stored definitions (one that no longer parses is skipped, with a warning).

        Both kinds are read before anything changes, and then taken at once: a reader between two
        awaits, or a store that fails halfway, never sees an empty or half-read set.
        """
        stored = {kind: await self.engine.store.definitions(kind) for kind in (RULES, ZONES)}
        defs: dict[str, dict[str, dict[str, Any]]] = {RULES: {}, ZONES: {}}
        for kind in (RULES, ZONES):
            for def_id, body in stored[kind].items():
                try:
                    _parse(kind, body)
                except ValueError as exc:
                    log.warning("stored %s %r is skipped: %s", kind[:-1], def_id, exc)
                    continue
                defs[kind][def_id] = body
        self.defs = defs
        self._rules, self._zones = self._parsed()
        self._hooks = {r.id: r.webhook for r in self._rules if r.webhook}
        self.configure(self.engine.processors)

    def configure(self, processors: StreamProcessors) -> None:
        """Give fresh processors the current rules (before their state is restored)."""
        processors.set_rules(self._rules, self._zones)

    async def after_recovery(self) -> None:
        """Open alerts take back the acknowledgements stored since the checkpoint."""
        book = self.engine.processors.rules.alerts
        for alert in book.open_alerts():
            if alert.acknowledged_at is not None:
                continue
            stored = await self.engine.store.get_alert(alert.id)
            if stored is not None and stored.acknowledged_at is not None:
                book.acknowledge(
                    alert.id, stored.acknowledged_by or "", stored.ack_note, stored.acknowledged_at
                )

    # -- definitions -------------------------------------------------------------------------

    def listing(self, kind: str) -> list[dict[str, Any]]:
        """The definitions of a kind, by id."""
        return [self.defs[kind][k] for k in sorted(self.defs[kind])]

    def get(self, kind: str, def_id: str) -> dict[str, Any]:
        """One definition.

        Raises:
            NotFound: No such id.
        """
        found = self.defs[kind].get(def_id)
        if found is None:
            msg = f"no {kind[:-1]} with id {def_id!r}"
            raise NotFound(msg)
        return found

    async def put(self, kind: str, body: Any, def_id: str | None = None) -> dict[str, Any]:
        """Create (``def_id`` None) or replace a definition; the stored definition.

        Raises:
            InvalidDefinition: The body does not parse, or the set of rules and zones it makes does not work.
            Conflict: Creating an id that exists.
            NotFound: Replacing an id that does not exist.
        """
        if not isinstance(body, dict):
            msg = f"a {kind[:-1]} is a JSON object"
            raise InvalidDefinition(msg)
        nul = _nul_at(body)
        if nul is not None:  # PostgreSQL text cannot hold one: refused on every store alike
            msg = f"{nul}: NUL characters (\\u0000) are not allowed in a {kind[:-1]}"
            raise InvalidDefinition(msg)
        if def_id is not None:
            given = body.get("id", def_id)
            if given != def_id:
                msg = f"the body's id {given!r} is not the id in the path {def_id!r}"
                raise InvalidDefinition(msg)
            body = {**body, "id": def_id}
        try:
            parsed_id = _parse(kind, body).id
        except ValueError as exc:
            raise InvalidDefinition(str(exc)) from None
        stored: dict[str, Any] = {**body, "id": parsed_id}
        async with self._lock:
            known = self.defs[kind]
            if def_id is None and parsed_id in known:
                msg = (
                    f"a {kind[:-1]} with id {parsed_id!r} exists (PUT /api/v1/{kind}/{parsed_id} replaces it)"
                )
                raise Conflict(msg)
            if def_id is not None and def_id not in known:
                self.get(kind, def_id)
            candidate = {**self.defs, kind: {**known, parsed_id: stored}}
            rules, zones = self._parsed(candidate)
            try:
                _check(rules, zones)
            except ValueError as exc:
                raise InvalidDefinition(str(exc)) from None
            await self.engine.store.put_definition(kind, parsed_id, stored)
            self.defs = candidate
            self._apply(rules, zones)
        return stored

    async def delete(self, kind: str, def_id: str) -> None:
        """Remove a definition (open alerts of a removed rule clear).

        Raises:
            NotFound: No such id.
        """
        async with self._lock:
            self.get(kind, def_id)
            candidate = {**self.defs, kind: {k: v for k, v in self.defs[kind].items() if k != def_id}}
            rules, zones = self._parsed(candidate)
            users = [r.id for r in rules if getattr(r, "zone_id", None) == def_id] if kind == ZONES else []
            if users:
                msg = f"zone {def_id!r} is used by rule(s) {', '.join(users)}: delete or change them first"
                raise Conflict(msg)
            await self.engine.store.delete_definition(kind, def_id)
            self.defs = candidate
            self._apply(rules, zones)

    def _parsed(
        self, defs: dict[str, dict[str, dict[str, Any]]] | None = None
    ) -> tuple[list[Rule], list[Zone]]:
        defs = defs or self.defs
        rules = [parse_rule(d) for _, d in sorted(defs[RULES].items())]
        zones = [parse_zone(d) for _, d in sorted(defs[ZONES].items())]
        return rules, zones

    def _apply(self, rules: list[Rule], zones: list[Zone]) -> None:
        engine = self.engine
        twins = engine.processors.twins
        now = twins.partition_time if twins.partition_time is not None else engine.clock.now_us()
        engine._take(engine.processors.set_rules(rules, zones, now), live=True)
        self._rules, self._zones = rules, zones
        self._hooks = {r.id: r.webhook for r in rules if r.webhook}

    def metrics(self) -> dict[str, tuple[str, str, float]]:
        """Prometheus samples: name → (``counter`` or ``gauge``, help text, value)."""
        hooks = self.engine.webhooks
        return {
            "rules": ("gauge", "Alert rules defined.", len(self.defs[RULES])),
            "zones": ("gauge", "Geofence zones defined.", len(self.defs[ZONES])),
            "alerts_open": (
                "gauge",
                "Alerts active or acknowledged.",
                len(self.engine.processors.rules.alerts),
            ),
            "webhooks_sent_total": ("counter", "Alert webhooks delivered (2xx).", hooks.sent_total),
            "webhooks_retries_total": (
                "counter",
                "Alert webhook attempts that failed and were retried.",
                hooks.retries_total,
            ),
            "webhooks_failed_total": (
                "counter",
                "Alert webhooks given up after every attempt.",
                hooks.failed_total,
            ),
            "webhooks_dropped_total": (
                "counter",
                "Alert webhooks dropped: the queue was full.",
                hooks.dropped_total,
            ),
        }

    # -- alerts ------------------------------------------------------------------------------

    async def acknowledge(self, alert_id: str, by: str, note: str | None) -> Alert:
        """Acknowledge an open alert: stored at once and told to live subscribers.

        Raises:
            NotFound: No such alert.
            Conflict: The alert is cleared.
        """
        book = self.engine.processors.rules.alerts
        try:
            alert = book.acknowledge(alert_id, by, note, self.engine.clock.now_us())
        except AlertNotOpen:
            stored = await self.engine.store.get_alert(alert_id)
            if stored is None:
                msg = f"no alert with id {alert_id!r}"
                raise NotFound(msg) from None
            msg = f"alert {alert_id!r} is {stored.state}: only an open alert can be acknowledged"
            raise Conflict(msg) from None
        await self.engine.store.write_derived(Derived(alerts=[alert]))
        self.engine.alerts.publish([AlertChange(ACKED, alert)])
        return alert

    def announce(self, changes: Iterable[AlertChange]) -> None:
        """Tell live subscribers and the rules' webhooks (never waits)."""
        changes = list(changes)
        self.engine.alerts.publish(changes)
        for change in changes:
            url = self._hooks.get(change.alert.rule_id)
            if url and change.kind in _WEBHOOK_KINDS:
                self.engine.webhooks.offer(url, webhook_body(change))


def webhook_body(change: AlertChange) -> dict[str, Any]:
    """What a webhook receives: ``{"event": "opened" | "escalated" | "cleared", "alert": {...}}``."""
    return {"event": change.kind, "alert": change.alert.as_json()}


def _check(rules: list[Rule], zones: list[Zone]) -> None:
    """Raise ValueError when the rules and zones cannot work together (a zone rule's zone is missing)."""
    known = {z.id for z in zones}
    for rule in rules:
        zone_id = getattr(rule, "zone_id", None)
        if zone_id is not None and zone_id not in known:
            msg = f"rule {rule.id!r}: zone {zone_id!r} does not exist (create it with POST /api/v1/zones)"
            raise ValueError(msg)
    RuleBook(rules, zones)


def _nul_at(value: Any, path: str = "") -> str | None:
    """Where the first text (a key or a value) holding a NUL character is in JSON, or None."""
    if isinstance(value, str):
        return (path or "the body") if "\0" in value else None
    items: Iterable[tuple[Any, Any]] = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\0" in key:
            return where
        found = _nul_at(item, where)
        if found is not None:
            return found
    return None


def _parse(kind: str, body: dict[str, Any]) -> Rule | Zone:
    return parse_rule(body) if kind == RULES else parse_zone(body)
