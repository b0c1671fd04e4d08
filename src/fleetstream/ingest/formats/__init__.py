"""Input formats. Each module holds one format: how to recognise an item and decode it.

Adding a format is one module with a :class:`Format` object, listed in
:data:`FORMATS` in the order they are tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fleetstream.domain.records import DeviceMessage

if TYPE_CHECKING:
    from fleetstream.ingest.typeregistry import UserTypes


@dataclass(frozen=True, slots=True)
class DecodeContext:
    """What a decoder needs besides the item: the receive time and the limits."""

    received_at: int
    max_future_us: int
    device_id: str | None = None  # from the URL path or the MQTT topic, when there is one
    out_of_range: str = "reject"  # or "flag": accept a value outside its type's range, and count it
    user_types: UserTypes | None = None  # device types registered through the API


class Format(Protocol):
    """One input format."""

    name: str
    example: str

    def matches(self, item: dict[str, Any]) -> bool:
        """Whether the item is of this format (cheap key checks only)."""
        ...

    def decode(self, item: dict[str, Any], ctx: DecodeContext) -> DeviceMessage:
        """The message; raises InvalidReading naming the field and the reason."""
        ...


def _formats() -> tuple[Format, ...]:
    from fleetstream.ingest.formats import canonical, envelope, host, tagged, tracker, typed

    return (envelope.FORMAT, tagged.FORMAT, typed.FORMAT, host.FORMAT, tracker.FORMAT, canonical.FORMAT)


FORMATS: tuple[Format, ...] = _formats()
