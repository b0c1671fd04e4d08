"""An api instance's side of the writes that need a device's single writer.

- Rules and zones: checked exactly as the embedded engine checks them (:class:`RuleControl`:
  same 201, 404, 409, 422) and written to the store; the workers apply them within a second
  (:mod:`.worker_rules`). Every instance re-reads the definitions each second, so a change made
  through one is listed by all.
- Alert acknowledgements and device shadow updates: sent as commands to the worker owning the
  device's partition (:mod:`.writes`), answered once that worker has applied and stored them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec

from fleetstream.cluster import writes
from fleetstream.cluster.risks import ClusterModelControl
from fleetstream.cluster.writes import ACK, SHADOW, partition_of
from fleetstream.domain.alerts import CLEARED, Alert
from fleetstream.domain.events import DeviceEvent
from fleetstream.domain.twin import DeviceTwin
from fleetstream.engine.pipeline import Engine
from fleetstream.engine.rule_control import RuleControl
from fleetstream.errors import Conflict, NotFound

if TYPE_CHECKING:
    from fleetstream.adapters.store.postgres import PostgresStore
    from fleetstream.domain.geometry import Zone
    from fleetstream.domain.rulebook import Rule

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 10.0  # a worker applies a command within ~0.1 s; beyond this none is there
REFRESH_S = 1.0


class ClusterRuleControl(RuleControl):
    """Rule and zone definitions in the store, applied by the workers; acknowledgements sent to them."""

    def __init__(self, engine: Engine, store: PostgresStore, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        super().__init__(engine)
        self.store = store
        self.timeout_s = timeout_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Read the definitions, then again every second (another instance may change them)."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever(), name="fleetstream-api-rules")

    async def stop(self) -> None:
        """Stop re-reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> None:
        """Take the stored definitions as they are now (if the store fails, keep the last read)."""
        async with self._lock:
            await self.load()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store is down: keep the last definitions read
                log.warning("re-reading rule definitions failed: %s", exc)

    async def put(self, kind: str, body: Any, def_id: str | None = None) -> dict[str, Any]:
        """As :meth:`RuleControl.put`, over the definitions stored now."""
        await self.refresh()
        return await super().put(kind, body, def_id)

    async def delete(self, kind: str, def_id: str) -> None:
        """As :meth:`RuleControl.delete`, over the definitions stored now."""
        await self.refresh()
        await super().delete(kind, def_id)

    def _apply(self, rules: list[Rule], zones: list[Zone]) -> None:
        # nothing runs here: the workers see the stored change within a second
        self._rules, self._zones = rules, zones
        self._hooks = {r.id: r.webhook for r in rules if r.webhook}

    async def acknowledge(self, alert_id: str, by: str, note: str | None) -> Alert:
        """Acknowledge an open alert through the worker owning its device.

        Raises:
            NotFound: No such alert.
            Conflict: The alert is cleared.
            Overloaded: No worker applied it in time (503).
        """
        stored = await self.store.get_alert(alert_id)
        if stored is None:
            msg = f"no alert with id {alert_id!r}"
            raise NotFound(msg)
        if stored.state == CLEARED:
            msg = f"alert {alert_id!r} is {stored.state}: only an open alert can be acknowledged"
            raise Conflict(msg)
        partition = await _partition(self.store, stored.device_id)
        body = {"alert_id": alert_id, "by": by, "note": note}
        answer = await writes.submit(
            self.store,
            partition,
            stored.device_id,
            ACK,
            body,
            now_us=self.engine.clock.now_us(),
            timeout_s=self.timeout_s,
        )
        return Alert.from_state(answer)


async def _partition(store: PostgresStore, device_id: str) -> int:
    """The readings partition that holds the device (its stored twin's position says which).

    Raises:
        NotFound: The device has no stored twin (it has not sent anything yet).
    """
    twins = await store.load_twins([device_id])
    if not twins:
        msg = f"no device {device_id!r} has sent anything yet"
        raise NotFound(msg)
    return partition_of(twins[0].position)


class ApiEngine(Engine):
    """The api's idle engine: shadow updates and rule actions go to the workers."""

    rules: ClusterRuleControl
    models: ClusterModelControl

    def __init__(
        self,
        *args: Any,
        cluster_store: PostgresStore,
        command_timeout_s: float = COMMAND_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.cluster_store = cluster_store
        self.rules = ClusterRuleControl(self, cluster_store, command_timeout_s)
        self.models = ClusterModelControl(self, self.models.settings, cluster_store)  # risks: .risks

    async def update_shadow(
        self, device_id: str, section: str, patch: object, if_match: int | tuple[int, int] | None = None
    ) -> tuple[DeviceTwin, DeviceEvent | None]:
        """Merge-patch a device's ``desired`` or ``reported`` document through its owning worker.

        Raises:
            NotFound: The device has not sent anything yet.
            InvalidReading: The patch is not an object or is over the limits.
            PreconditionFailed: ``if_match`` is not the current version.
            Overloaded: No worker applied it in time (503).
        """
        store = self.cluster_store
        partition = await _partition(store, device_id)
        match: Any = list(if_match) if isinstance(if_match, tuple) else if_match
        body = {"section": section, "patch": patch, "if_match": match}
        answer = await writes.submit(
            store,
            partition,
            device_id,
            SHADOW,
            body,
            now_us=self.clock.now_us(),
            timeout_s=self.rules.timeout_s,
        )
        twin = DeviceTwin.from_state(answer["twin"])
        event = answer.get("event")
        return twin, None if event is None else msgspec.convert(event, DeviceEvent)
