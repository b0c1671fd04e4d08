"""Every HTTP endpoint the server offers is documented in docs/api.md (method and path)."""

from __future__ import annotations

import re
from pathlib import Path

from fleetstream.api.app import create_app
from fleetstream.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"
_PARAM = re.compile(r"\{[^}]*\}")


def _normal(path: str) -> str:
    return _PARAM.sub("{}", path)


def _documented() -> set[tuple[str, str]]:
    text = _normal(DOCS.read_text(encoding="utf-8"))
    return {
        (m.group(1), m.group(2).rstrip("/") or "/")
        for m in re.finditer(r"\b(GET|POST|PUT|PATCH|DELETE) (/[A-Za-z0-9_./{}-]*)", text)
    }


def test_every_route_is_in_the_api_reference() -> None:
    spec = create_app(Settings()).openapi()
    documented = _documented()
    served = {(method.upper(), _normal(path)) for path, ops in spec["paths"].items() for method in ops}
    assert len(served) > 20  # the spec lists the routes

    missing = sorted(f"{m} {p}" for m, p in served - documented)
    assert missing == []
