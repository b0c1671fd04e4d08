"""The one exception tree of fleetstream.

::

    FleetstreamError
     ├── ConfigError            bad settings or URL            (CLI message, exit 2)
     ├── InvalidInput           a request the client must fix  (4xx)
     │    ├── InvalidReading    an item that fails validation  (422, per item)
     │    ├── MalformedBody     not JSON / NDJSON              (400)
     │    ├── UnsupportedMediaType                             (415)
     │    ├── PayloadTooLarge   body or batch over the limit   (413)
     │    ├── NotFound                                         (404)
     │    ├── Conflict          clashes with the current state (409)
     │    ├── InvalidDefinition a rule or zone that cannot work (422)
     │    └── PreconditionFailed  an If-Match that no longer holds (412)
     ├── Overloaded(retry_after) a full queue: try later       (503 + Retry-After)
     ├── BusUnavailable         the log cannot take data now   (503)
     ├── StoreError             the store failed               (503)
     └── DeliveryFailed         the simulator could not deliver a batch (CLI message)

Adapters translate driver errors into these at their edge; the API maps each
to one status code and a body ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any


class FleetstreamError(Exception):
    """Base of every error fleetstream raises on purpose."""

    code = "error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(FleetstreamError):
    """Settings, a URL or a CLI option that cannot work."""

    code = "config_error"


class InvalidInput(FleetstreamError):
    """A request the client must change before sending again."""

    code = "invalid_input"


class InvalidReading(InvalidInput):
    """An item that fails validation; the message names the field and the reason."""

    code = "invalid_reading"


class MalformedBody(InvalidInput):
    """A body that is not the JSON or NDJSON it claims to be."""

    code = "malformed_body"


class UnsupportedMediaType(InvalidInput):
    """A content type the endpoint does not read."""

    code = "unsupported_media_type"


class PayloadTooLarge(InvalidInput):
    """A body or batch over the configured limit."""

    code = "payload_too_large"


class NotFound(InvalidInput):
    """No such resource."""

    code = "not_found"


class Conflict(InvalidInput):
    """The request clashes with the resource's current state (a duplicate id, a cleared alert)."""

    code = "conflict"


class InvalidDefinition(InvalidInput):
    """A rule or zone definition that cannot work; the message says why."""

    code = "invalid_definition"


class PreconditionFailed(InvalidInput):
    """An ``If-Match`` version that is not the current one: read again, then retry."""

    code = "precondition_failed"


class Overloaded(FleetstreamError):
    """A bounded queue is full: the client should retry after ``retry_after`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class BusUnavailable(FleetstreamError):
    """The log cannot take data now; nothing was acknowledged."""

    code = "bus_unavailable"


class StoreError(FleetstreamError):
    """The store failed to read or write."""

    code = "store_error"


class DeliveryFailed(FleetstreamError):
    """A batch that could not be delivered: the target is unreachable or keeps failing."""

    code = "delivery_failed"
