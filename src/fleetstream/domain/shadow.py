"""The device shadow: ``desired`` and ``reported`` documents, their merge patches and ``delta``.

The semantics are those of AWS IoT device shadows and Azure device twins:

- an update is a JSON merge patch (RFC 7396): keys of the patch replace the
  document's, a nested object merges into the nested object, ``null`` deletes
  a key; a patch must be an object (a whole document is never replaced);
- each section keeps the time every leaf was last set (``metadata``, the same
  shape as the document, a time in µs at each leaf) and a version that counts
  the changes to it (a patch that changes nothing leaves both alone, so a
  device may report its state again and again without growing the event log);
- ``delta`` is what a device still has to do: every desired leaf whose value
  ``reported`` does not hold (numbers compare by value, ``true`` is not ``1``).

Everything here is pure and works on builtins; documents are never changed in
place (a patch returns new objects), so an event's payload and a twin's
document never share mutable parts.
"""

from __future__ import annotations

import json
from typing import Any

DESIRED = "desired"
REPORTED = "reported"
SECTIONS = (DESIRED, REPORTED)

MAX_DEPTH = 8
"""Objects nested deeper than this are refused (the top-level document is depth 1)."""
MAX_BYTES = 8192
"""A patch, and the document it leads to, may take at most this many bytes of JSON."""
MAX_KEY = 128
"""Longest key, in characters."""

Document = dict[str, Any]


class ShadowError(ValueError):
    """A patch the shadow refuses: not an object, too deep, too large, a bad key."""


class VersionMismatch(ValueError):
    """An ``If-Match`` version that is not the section's current one."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"version {expected} was expected but the document is at version {current}")
        self.expected = expected
        self.current = current


def check_patch(patch: object) -> Document:
    """The patch, when it is a JSON object within the limits; raises :class:`ShadowError` otherwise.

    Example:
        >>> check_patch({"interval_s": 5, "led": None})
        {'interval_s': 5, 'led': None}
        >>> check_patch([1])
        Traceback (most recent call last):
        fleetstream.domain.shadow.ShadowError: a shadow update must be a JSON object, got array
    """
    if not isinstance(patch, dict):
        msg = f"a shadow update must be a JSON object, got {_json_kind(patch)}"
        raise ShadowError(msg)
    _check_tree(patch, 1, "")
    size = _size(patch)
    if size > MAX_BYTES:
        msg = f"a shadow update may take at most {MAX_BYTES} bytes of JSON, got {size}"
        raise ShadowError(msg)
    return patch


def check_document(document: Document) -> None:
    """Raise :class:`ShadowError` when a patched document outgrows :data:`MAX_BYTES`."""
    size = _size(document)
    if size > MAX_BYTES:
        msg = f"the document would take {size} bytes of JSON, over the limit of {MAX_BYTES}"
        raise ShadowError(msg)


def merge(document: Document, patch: Document) -> Document:
    """The document after a merge patch (a new object; neither argument changes).

    Example:
        >>> merge({"a": 1, "n": {"x": 1, "y": 2}}, {"a": None, "n": {"y": 3}, "b": [1]})
        {'n': {'x': 1, 'y': 3}, 'b': [1]}
    """
    out = dict(document)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            inner = out.get(key)
            out[key] = merge(inner if isinstance(inner, dict) else {}, value)
        else:
            out[key] = copy_json(value)
    return out


def merge_metadata(metadata: Document, patch: Document, ts: int) -> Document:
    """The metadata after a patch applied at ``ts``: each leaf the patch sets gets ``ts``.

    Example:
        >>> merge_metadata({"a": 1, "n": {"x": 1}}, {"a": None, "n": {"y": 0}, "b": 7}, 9)
        {'n': {'x': 1, 'y': 9}, 'b': 9}
    """
    out = dict(metadata)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            inner = out.get(key)
            out[key] = merge_metadata(inner if isinstance(inner, dict) else {}, value, ts)
        else:
            out[key] = ts
    return out


def delta(desired: Document, reported: Document) -> Document:
    """The desired leaves that ``reported`` does not hold yet.

    Example:
        >>> delta({"interval_s": 5, "led": {"on": True, "rgb": [1, 2, 3]}},
        ...       {"interval_s": 5.0, "led": {"on": 1, "rgb": [1, 2, 3]}})
        {'led': {'on': True}}
    """
    out: Document = {}
    for key, want in desired.items():
        have = reported.get(key, _MISSING)
        if isinstance(want, dict) and isinstance(have, dict):
            inner = delta(want, have)
            if inner:
                out[key] = inner
        elif isinstance(want, dict) and not want:
            continue  # an empty object asks for nothing
        elif not same(want, have):
            out[key] = copy_json(want)
    return out


def pick(metadata: Document, shape: Document) -> Document:
    """The part of ``metadata`` that covers the keys of ``shape`` (the metadata of a delta)."""
    out: Document = {}
    for key, value in shape.items():
        meta = metadata.get(key)
        if isinstance(value, dict) and isinstance(meta, dict):
            out[key] = pick(meta, value)
        elif meta is not None:
            out[key] = meta
    return out


def same(a: object, b: object) -> bool:
    """JSON equality: numbers by value, but a boolean equals only a boolean.

    Example:
        >>> same(5, 5.0), same(True, 1), same([1, {"a": 2}], [1.0, {"a": 2}])
        (True, False, True)
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def _check_tree(value: object, depth: int, path: str) -> None:
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            msg = f"{path or 'the document'}: objects may nest at most {MAX_DEPTH} deep"
            raise ShadowError(msg)
        for key, inner in value.items():
            if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY:
                msg = f"{path or 'the document'}: keys must have 1 to {MAX_KEY} characters"
                raise ShadowError(msg)
            _check_tree(inner, depth + 1, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            _check_tree(inner, depth + 1, f"{path}[{i}]")


def _size(document: Document) -> int:
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value (dicts and lists copied, scalars shared)."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_json(v) for v in value]
    return value


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return "number" if isinstance(value, int | float) else type(value).__name__


class _Missing:
    """Stands for an absent key (unequal to every JSON value)."""


_MISSING = _Missing()
