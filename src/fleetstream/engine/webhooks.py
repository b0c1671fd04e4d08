"""Webhook delivery: a POST of an alert's JSON to the URL its rule names, off the stream's path.

:meth:`WebhookSender.offer` never waits: it puts the delivery on a bounded
queue (a full queue drops it and counts it). A few worker tasks send them with
``httpx``, retrying a failed attempt (a connection error, a timeout or a non-2xx
answer) after an exponential backoff (``backoff_s``, twice that, ...) up to
``attempts`` tries in all, then giving up with a log line. A slow or dead
receiver therefore costs the stream nothing; deliveries to one receiver may
arrive out of order when retries interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """How deliveries are retried and how many may wait."""

    attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 5.0
    max_queue: int = 1000
    workers: int = 4


class WebhookSender:
    """Bounded queue and workers of webhook deliveries; see the module docstring."""

    def __init__(self, settings: WebhookSettings | None = None) -> None:
        self.settings = settings or WebhookSettings()
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(self.settings.max_queue)
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self.sent_total = 0
        self.failed_total = 0
        self.retries_total = 0
        self.dropped_total = 0

    async def start(self) -> None:
        """Start the workers."""
        self._client = httpx.AsyncClient(timeout=self.settings.timeout_s)
        self._workers = [
            asyncio.create_task(self._work(), name=f"fleetstream-webhook-{i}")
            for i in range(self.settings.workers)
        ]

    async def stop(self) -> None:
        """Stop the workers (deliveries still queued or retrying are given up)."""
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def offer(self, url: str, body: dict[str, Any]) -> bool:
        """Queue a delivery; False (and counted) when the queue is full. Never waits."""
        try:
            self._queue.put_nowait((url, body))
        except asyncio.QueueFull:
            self.dropped_total += 1
            log.warning("webhook queue full: dropped a delivery to %s", url)
            return False
        return True

    @property
    def pending(self) -> int:
        """Deliveries waiting for a worker."""
        return self._queue.qsize()

    async def _work(self) -> None:
        while True:
            url, body = await self._queue.get()
            try:
                await self._deliver(url, body)
            finally:
                self._queue.task_done()

    async def _deliver(self, url: str, body: dict[str, Any]) -> None:
        assert self._client is not None
        delay = self.settings.backoff_s
        for attempt in range(1, self.settings.attempts + 1):
            try:
                response = await self._client.post(url, json=body)
                if 200 <= response.status_code < 300:
                    self.sent_total += 1
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.settings.attempts:
                break
            self.retries_total += 1
            log.info(
                "webhook to %s failed (%s), attempt %d; retrying in %.1f s", url, problem, attempt, delay
            )
            await asyncio.sleep(delay)
            delay *= 2
        self.failed_total += 1
        log.warning("webhook to %s failed %d times; giving up (%s)", url, self.settings.attempts, problem)
