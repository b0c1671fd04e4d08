"""A worker's rules, alerts and commands: what it does besides consuming readings.

- Rules and zones: read from the store at start and whenever their fingerprint (an md5 over both
  tables, one cheap query) changes, checked every second; a change is applied to every partition's
  processors at once (alerts of removed or changed rules clear) and what that emits is stored with
  the partitions' checkpoints, as a timer tick's output is.
- Alerts: the changes a batch, a tick or a rule change made are held until their transaction is
  stored, then published to the live topic (the api instances' ``/api/v1/stream/alerts``) and
  offered to the rules' webhooks (sent by this worker, the device's owner, never blocking).
- Commands (alert acknowledgements, device shadow updates) for the partitions this worker owns:
  see :mod:`.writes`; each is applied between two batches, its result stored in the checkpoint's
  transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from fleetstream.adapters.store.postgres import Connection
from fleetstream.cluster import writes
from fleetstream.cluster.outage import OutageLog
from fleetstream.cluster.writes import ACK, SHADOW, Command, Outcome
from fleetstream.domain.alerts import ACKED, AlertChange, AlertNotOpen
from fleetstream.domain.geometry import Zone
from fleetstream.domain.rulebook import Rule, parse_rule, parse_zone
from fleetstream.domain.shadow import ShadowError, VersionMismatch
from fleetstream.engine.rule_control import RULES, ZONES, webhook_body
from fleetstream.engine.webhooks import WebhookSender, WebhookSettings
from fleetstream.errors import StoreError
from fleetstream.ports import Derived

if TYPE_CHECKING:
    from fleetstream.cluster.worker import Worker
    from fleetstream.engine.processors import StreamProcessors

log = logging.getLogger(__name__)

COMMAND_POLL_S = 0.1
RULES_POLL_S = 1.0
PRUNE_EVERY_S = 60.0
KEEP_COMMANDS_US = 3600 * 1_000_000  # done commands are kept an hour (for inspection), then deleted
_WEBHOOK_KINDS = frozenset(("opened", "escalated", "cleared"))
_DIGEST = """(SELECT md5(coalesce(string_agg(id || chr(1) || definition, chr(2) ORDER BY id COLLATE "C"), ''))
    FROM {})"""
_FINGERPRINT = f"SELECT {_DIGEST.format(RULES)}, {_DIGEST.format(ZONES)}"


class WorkerRules:
    """Rules, alert announcements and commands of one :class:`~.worker.Worker`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        engine = worker.settings.engine
        self.webhooks = WebhookSender(
            WebhookSettings(attempts=engine.webhook_attempts, backoff_s=engine.webhook_backoff_s)
        )
        self.rules: list[Rule] = []
        self.zones: list[Zone] = []
        self.hooks: dict[str, str] = {}
        self.fingerprint: tuple[str, str] | None = None
        self.changes: list[AlertChange] = []  # made, not stored yet
        self.commands_total = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the command table, read the definitions, start the webhook sender."""
        await writes.create_table(self.worker.store)
        await self.reload()
        await self.webhooks.start()

    def run(self) -> None:
        """Start polling for definition changes and commands."""
        self._task = asyncio.create_task(self._poll_forever(), name="fleetstream-worker-writes")

    async def stop(self) -> None:
        """Stop polling; send what webhooks are queued (briefly)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.webhooks.stop()

    # -- definitions --------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Read the definitions again if they changed; whether they did."""
        store = self.worker.store
        row = (await store.execute(_FINGERPRINT))[0]
        fingerprint = (str(row[0]), str(row[1]))
        if fingerprint == self.fingerprint:
            return False
        rules: list[Rule] = []
        zones: list[Zone] = []
        for kind in (RULES, ZONES):
            for def_id, body in sorted((await store.definitions(kind)).items()):
                try:
                    if kind == RULES:
                        rules.append(parse_rule(body))
                    else:
                        zones.append(parse_zone(body))
                except ValueError as exc:
                    log.warning("stored %s %r is skipped: %s", kind[:-1], def_id, exc)
        self.rules, self.zones, self.fingerprint = rules, zones, fingerprint
        self.hooks = {r.id: r.webhook for r in rules if r.webhook}
        log.info("worker %s: %d rules, %d zones", self.worker.worker_id, len(rules), len(zones))
        return True

    def configure(self, processors: StreamProcessors) -> None:
        """Give fresh processors the current rules (before their state is restored)."""
        processors.set_rules(self.rules, self.zones)

    # -- alerts --------------------------------------------------------------------------------

    def take(self, processors: StreamProcessors) -> None:
        """Hold the alert changes the processors made until they are stored."""
        if processors.alert_changes:
            self.changes += processors.alert_changes
            processors.alert_changes = []

    def drop(self) -> None:
        """Forget the held changes (their transaction failed: they are made again)."""
        self.changes = []

    def announce(self) -> None:
        """Publish the held changes (now stored) and offer them to the rules' webhooks."""
        changes, self.changes = self.changes, []
        if not changes:
            return
        self.worker.live.alerts(changes)
        for change in changes:
            url = self.hooks.get(change.alert.rule_id)
            if url and change.kind in _WEBHOOK_KINDS:
                self.webhooks.offer(url, webhook_body(change))

    # -- polling --------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_rules = loop.time() + RULES_POLL_S
        next_prune = loop.time()
        outage = OutageLog(log, f"worker {self.worker.worker_id}: rule changes and commands")
        while True:
            await asyncio.sleep(COMMAND_POLL_S)
            try:
                if loop.time() >= next_rules:
                    next_rules = loop.time() + RULES_POLL_S
                    if await self.reload():
                        await self.apply_rules()
                if loop.time() >= next_prune:
                    next_prune = loop.time() + PRUNE_EVERY_S
                    await writes.prune(self.worker.store, self.worker.clock.now_us() - KEEP_COMMANDS_US)
                await self.apply_commands()
            except asyncio.CancelledError:
                raise
            except StoreError as exc:  # PostgreSQL away: once in the log, not ten times a second
                outage.failed(exc)
                continue
            except Exception:
                log.exception("worker %s: rule changes or commands failed; retrying", self.worker.worker_id)
                continue
            outage.succeeded()

    async def apply_rules(self) -> None:
        """Swap the current rules into every partition's processors and store what that emitted."""
        worker = self.worker
        async with worker._lock:
            derived = Derived()
            touched: dict[int, int] = {}
            for number, part in worker.partitions.items():
                twins = part.processors.twins
                now = twins.partition_time if twins.partition_time is not None else worker.clock.now_us()
                out = part.processors.set_rules(self.rules, self.zones, now)
                self.take(part.processors)
                derived.extend(out)
                touched[number] = part.next_offset
            await self._store(derived, touched, {})

    async def apply_commands(self) -> None:
        """Apply the pending commands of the partitions this worker owns, and store their results."""
        worker = self.worker
        commands = await writes.pending(worker.store, sorted(worker.partitions))
        if not commands:
            return
        async with worker._lock:
            derived = Derived()
            touched: dict[int, int] = {}
            outcomes: dict[int, Outcome] = {}
            for command in commands:
                part = worker.partitions.get(command.partition)
                if part is None:
                    continue  # revoked meanwhile: its new owner applies it
                outcomes[command.id] = await self._apply(command, part.processors, derived)
                touched[command.partition] = part.next_offset
            await self._store(derived, touched, outcomes)
            self.commands_total += len(outcomes)

    async def _store(self, derived: Derived, touched: dict[int, int], outcomes: dict[int, Outcome]) -> None:
        """Store ``derived`` and the outcomes with the touched partitions' checkpoints, then announce."""
        worker = self.worker
        if not touched:
            return
        now = worker.clock.now_us()

        async def then(con: Connection) -> None:
            await writes.record_outcomes(con, outcomes, now)

        try:
            await worker._store([], derived, touched, then=then)
        except Exception:
            self.drop()
            for number in touched:  # their state moved past the store: back to the checkpoint
                worker.partitions[number] = await worker._restore(number)
            raise
        worker.live.stored([], derived.events)
        self.announce()

    async def _apply(self, command: Command, processors: StreamProcessors, derived: Derived) -> Outcome:
        """Apply one command to its partition's processors; what the api answers."""
        now = self.worker.clock.now_us()
        body = command.body
        if command.kind == ACK:
            alert_id = str(body["alert_id"])
            try:
                alert = processors.rules.alerts.acknowledge(alert_id, body["by"], body.get("note"), now)
            except AlertNotOpen:
                stored = await self.worker.store.get_alert(alert_id)
                if stored is None:
                    return _error(404, f"no alert with id {alert_id!r}")
                msg = f"alert {alert_id!r} is {stored.state}: only an open alert can be acknowledged"
                return _error(409, msg)
            derived.alerts.append(alert)
            self.changes.append(AlertChange(ACKED, alert))
            return Outcome(200, alert.to_state())
        if command.kind == SHADOW:
            return await self._shadow(command, processors, derived, now)
        return _error(404, f"unknown command {command.kind!r}")

    async def _shadow(
        self, command: Command, processors: StreamProcessors, derived: Derived, now: int
    ) -> Outcome:
        device_id, body = command.device_id, command.body
        twins = processors.twins
        if twins.missing([device_id]):
            twins.load(await self.worker.store.load_twins([device_id]))
        twin = twins.get(device_id)
        if twin is None:
            return _error(404, f"no device {device_id!r} has sent anything yet")
        if_match: Any = body.get("if_match")
        if isinstance(if_match, list):
            current = [twin.version, twin.readings]
            if if_match != current:
                msg = f"If-Match: the twin is at {current[0]}-{current[1]}, not {if_match[0]}-{if_match[1]}"
                return _error(412, msg, {"etag": f'"{current[0]}-{current[1]}"'})
            if_match = None
        section = str(body["section"])
        try:
            event = twins.update_shadow(device_id, section, body["patch"], now, if_match)
        except ShadowError as exc:
            return _error(422, f"{section}: {exc}")
        except VersionMismatch as exc:
            return _error(412, f"If-Match: {exc}", {"version": exc.current, "expected": exc.expected})
        if event is not None:
            derived.events.append(event)
        event_body = None if event is None else msgspec.to_builtins(event)
        return Outcome(200, {"event": event_body, "twin": twin.to_state()})


def _error(status: int, message: str, details: Any = None) -> Outcome:
    return Outcome(status, {"message": message, "details": details})
