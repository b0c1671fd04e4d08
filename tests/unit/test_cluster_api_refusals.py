"""What a standalone ``fleetstream api`` cannot serve is answered at once with the reason, instead of
a stream that stays open and silent forever or the embedded server's hint to use ``--simulator``."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fleetstream.cluster.api import NO_RAW_STREAM, NOT_IN_CLUSTER, SingleWriterOnly


async def _served(request: Request) -> PlainTextResponse:
    return PlainTextResponse("served")


def _request(method: str, path: str) -> httpx.Response:
    app = Starlette(routes=[Route("/{path:path}", _served, methods=["GET", "POST", "PATCH", "DELETE"])])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=SingleWriterOnly(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path)

    return asyncio.run(call())


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "message"),
    [
        ("GET", "/api/v1/stream", 501, "not_implemented", NO_RAW_STREAM),
        ("GET", "/api/v1/stream?device_id=d-1", 501, "not_implemented", NO_RAW_STREAM),
        ("POST", "/api/devices/d-1/messages", 501, "not_implemented", NO_RAW_STREAM),
        ("POST", "/api/v1/simulator/start", 501, "not_implemented", NOT_IN_CLUSTER),
        ("DELETE", "/api/v1/simulator/devices/x", 501, "not_implemented", NOT_IN_CLUSTER),
        ("GET", "/api/v1/simulator", 404, "not_found", NOT_IN_CLUSTER),
        ("GET", "/api/v1/simulator/devices", 404, "not_found", NOT_IN_CLUSTER),
    ],
)
def test_refused_with_the_reason(method: str, path: str, status: int, code: str, message: str) -> None:
    response = _request(method, path)
    assert response.status_code == status
    assert response.json() == {"error": {"code": code, "message": message, "details": None}}


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/stream/windows",
        "/api/v1/stream/events",
        "/api/v1/stream/alerts",
        "/api/v1/devices/d-1/events",
    ],
)
def test_the_relayed_streams_and_queries_pass(path: str) -> None:
    response = _request("GET", path)
    assert (response.status_code, response.text) == (200, "served")


def test_the_messages_name_what_to_use_instead() -> None:
    assert "/api/v1/stream/windows" in NO_RAW_STREAM
    assert "fleetstream simulate --target" in NOT_IN_CLUSTER
