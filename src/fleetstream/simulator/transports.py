"""How simulated messages reach a server: the ``Transport`` port and its adapters.

A transport sends one batch (a list of messages) and returns once the server
acknowledged it, or raises. Retrying what is worth retrying (an overloaded
server, a dropped connection) is the transport's job, bounded; what it still
cannot deliver it raises, and the simulator counts it as errors. Re-sending a
batch is safe: every message carries a ``msg_id``, and the server drops
re-sent ``(device, msg_id)`` pairs.

Targets are chosen by URL with :func:`transport_for`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import msgspec

from fleetstream.errors import (
    BusUnavailable,
    ConfigError,
    DeliveryFailed,
    InvalidInput,
    Overloaded,
    StoreError,
)

log = logging.getLogger(__name__)

Submit = Callable[[bytes, str], Awaitable[None]]
"""The server's in-process ingest: ``await submit(body, content_type)``; raises FleetstreamError."""

TELEMETRY_PATH = "/api/v1/telemetry"
JSON = "application/json"


class Transport(Protocol):
    """Delivers batches of simulated messages to a server."""

    async def start(self) -> None:
        """Open connections; call once before :meth:`send`."""
        ...

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """Deliver one batch; return once the server acknowledged it (may wait to retry).

        Raises:
            FleetstreamError: the batch was rejected, or could not be delivered after retries.
        """
        ...

    async def close(self) -> None:
        """Close connections; batches in flight fail."""
        ...


class InProcessTransport:
    """Hands batches to the server's ingest function in the same process, as JSON bytes.

    Args:
        submit: the server's ``async (body, content_type)``; raises FleetstreamError on refusal.
        max_retries: retries of a batch the server is too busy for (``Overloaded``,
            ``BusUnavailable``, ``StoreError``) before giving up on it.
        max_wait_s: longest pause before a retry, whatever ``retry_after`` says.
    """

    def __init__(self, submit: Submit, *, max_retries: int = 5, max_wait_s: float = 30.0) -> None:
        self._submit = submit
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s

    async def start(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """Submit the batch as a JSON array; retry while the server is overloaded."""
        body = msgspec.json.encode(batch)
        for attempt in range(self.max_retries + 1):
            try:
                await self._submit(body, JSON)
            except Overloaded as exc:
                if attempt == self.max_retries:
                    raise
                await asyncio.sleep(min(max(exc.retry_after, 0.0), self.max_wait_s))
            except (BusUnavailable, StoreError):
                if attempt == self.max_retries:
                    raise
                await asyncio.sleep(_backoff(attempt, 0.2, self.max_wait_s))
            else:
                return


class HttpTransport:
    """POSTs batches as JSON arrays to ``{base_url}/api/v1/telemetry``; a 2xx (202) is success.

    * 503 and 429: wait for ``Retry-After`` (capped at ``max_wait_s``) and send the same batch again.
    * Connection errors, timeouts and other 5xx: send again after an exponential backoff.
    * Both are retried ``max_retries`` times, then the batch fails.
    * Other 4xx: the batch fails at once (re-sending would not help); the first
      response body of each status is logged, so a misconfiguration is explained once.

    Args:
        base_url: the server, such as ``http://127.0.0.1:8000`` (a path prefix is kept).
        timeout_s: per-request timeout.
        max_retries: retries per batch before it counts as failed.
        backoff_s: first pause after a connection error; doubles each retry (with jitter).
        max_wait_s: longest pause before a retry.
        max_connections: connections kept to the server (batches in flight).
        headers: extra headers on every request (an ``Authorization`` token, say).
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_s: float = 0.2,
        max_wait_s: float = 30.0,
        max_connections: int = 8,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        base = base_url.rstrip("/")
        self.url = base if base.endswith(TELEMETRY_PATH) else base + TELEMETRY_PATH
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._headers = {**(headers or {}), "Content-Type": JSON}
        self._client: httpx.AsyncClient | None = None
        self._explained: set[int] = set()

    async def start(self) -> None:
        """Open the connection pool."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout_s, limits=self._limits, headers=self._headers
            )

    async def close(self) -> None:
        """Close the connection pool."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def send(self, batch: list[dict[str, Any]]) -> None:
        """POST the batch, retrying as the class docstring says.

        Raises:
            Overloaded: still 503/429 after every retry.
            InvalidInput: a 4xx other than 429.
            DeliveryFailed: the server stayed unreachable or kept answering 5xx.
        """
        if self._client is None:
            msg = "HttpTransport.send() before start()"
            raise RuntimeError(msg)
        body = msgspec.json.encode(batch)
        attempt = 0
        while True:
            last = attempt == self.max_retries
            try:
                response = await self._client.post(self.url, content=body)
            except httpx.TransportError as exc:
                if last:
                    msg = f"cannot deliver to {self.url}: {exc!r} ({attempt + 1} attempts)"
                    raise DeliveryFailed(msg) from exc
                await asyncio.sleep(_backoff(attempt, self.backoff_s, self.max_wait_s))
                attempt += 1
                continue
            status = response.status_code
            if 200 <= status < 300:
                return
            if status in (429, 503):
                wait = _retry_after_s(response.headers.get("Retry-After"), self.backoff_s)
                if last:
                    msg = f"{self.url} answered {status} to {attempt + 1} attempts"
                    raise Overloaded(msg, retry_after=wait, details={"status": status})
                await asyncio.sleep(min(wait, self.max_wait_s))
            elif 400 <= status < 500:
                self._explain(status, response.text)
                msg = f"{self.url} rejected a batch of {len(batch)} with HTTP {status}"
                raise InvalidInput(msg, details={"status": status, "body": response.text[:2000]})
            elif last:
                msg = f"{self.url} answered HTTP {status} to {attempt + 1} attempts"
                raise DeliveryFailed(msg, details={"status": status, "body": response.text[:2000]})
            else:
                await asyncio.sleep(_backoff(attempt, self.backoff_s, self.max_wait_s))
            attempt += 1

    def _explain(self, status: int, text: str) -> None:
        if status not in self._explained:
            self._explained.add(status)
            log.warning(
                "%s answered HTTP %d (batches failing so are not retried): %s", self.url, status, text[:2000]
            )


def transport_for(target: str, **options: Any) -> Transport:
    """The transport for a target URL: ``http://host:port`` (or https) → :class:`HttpTransport`,
    ``mqtt://host:port[/prefix]`` → :class:`~fleetstream.simulator.brokers.MqttTransport`,
    ``kafka://host:port[/topic]`` → :class:`~fleetstream.simulator.brokers.KafkaTransport`.

    ``options`` go to the transport's constructor.

    Raises:
        ConfigError: an unknown or malformed target.
    """
    parts = urlsplit(target)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            msg = f"simulator target {target!r} has no host: expected http://HOST:PORT"
            raise ConfigError(msg)
        return HttpTransport(target, **options)
    if scheme == "mqtt":
        from fleetstream.simulator.brokers import MqttTransport

        return MqttTransport(target, **options)
    if scheme == "kafka":
        from fleetstream.simulator.brokers import KafkaTransport

        return KafkaTransport(target, **options)
    msg = (
        f"unknown simulator target {target!r}: expected http://HOST:PORT (such as http://127.0.0.1:8000), "
        "mqtt://HOST:PORT[/topic-prefix] or kafka://HOST:PORT[/topic]"
    )
    raise ConfigError(msg)


def _backoff(attempt: int, first_s: float, max_s: float) -> float:
    # Jitter, so senders that failed together do not all come back together.
    return random.uniform(0.5, 1.0) * min(max_s, first_s * 2.0**attempt)


def _retry_after_s(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wait: float = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, wait)
