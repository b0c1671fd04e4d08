"""Which kind each device of a simulated fleet is: dealing kinds by weight, and reading the
weights from ``--kinds``.
"""

from __future__ import annotations

from collections.abc import Mapping

from fleetstream.errors import ConfigError
from fleetstream.simulator.models import (
    KINDS,
    DeviceKind,
)


def deal_kinds(devices: int, weights: Mapping[str, float] | None = None) -> list[DeviceKind]:
    """The kind of each device: a smooth weighted round-robin, so any prefix of the fleet is mixed.

    Equal weights (the default) give plain round-robin over :data:`KINDS`.

    Raises:
        ConfigError: an unknown kind, a negative weight, or no positive weight.

    Example:
        >>> [k.key for k in deal_kinds(4, {"thermostat": 3, "host": 1})]
        ['thermostat', 'thermostat', 'host', 'thermostat']
    """
    chosen = dict.fromkeys(KINDS, 1.0) if weights is None else dict(weights)
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown:
        msg = f"unknown device kind(s) {', '.join(unknown)}: expected some of {', '.join(KINDS)}"
        raise ConfigError(msg)
    if any(w < 0 for w in chosen.values()) or not any(w > 0 for w in chosen.values()):
        msg = f"device kind weights must be >= 0 with at least one > 0, got {chosen}"
        raise ConfigError(msg)
    keys = [key for key in KINDS if chosen.get(key, 0) > 0]
    total = sum(chosen[key] for key in keys)
    credit = dict.fromkeys(keys, 0.0)
    dealt: list[DeviceKind] = []
    for _ in range(devices):
        for key in keys:
            credit[key] += chosen[key]
        best = max(keys, key=lambda k: credit[k])  # first of equals: deterministic
        credit[best] -= total
        dealt.append(KINDS[best])
    return dealt


def parse_kinds(text: str) -> dict[str, float]:
    """``"thermostat,tracker,host"`` (equal weights) or ``"thermostat=3,host=1"`` → weight per kind.

    Raises:
        ConfigError: an unknown kind or a weight that is not a number.

    Example:
        >>> parse_kinds("thermostat=3, tracker")
        {'thermostat': 3.0, 'tracker': 1.0}
    """
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition("=")
        if not name:
            continue
        if name not in KINDS:
            msg = f"--kinds: unknown device kind {name!r}: expected some of {', '.join(KINDS)}"
            raise ConfigError(msg)
        try:
            weights[name] = float(weight) if weight else 1.0
        except ValueError:
            msg = f"--kinds: the weight of {name} must be a number, got {weight!r}"
            raise ConfigError(msg) from None
    if not weights:
        msg = f"--kinds: name at least one of {', '.join(KINDS)}"
        raise ConfigError(msg)
    return weights
