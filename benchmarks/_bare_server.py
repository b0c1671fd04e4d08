"""The bare ceiling of ``ingest.py``: the least an HTTP ingest endpoint on this stack can do.

A raw ASGI app served by uvicorn (httptools, uvloop, one process, no access log): it reads
the body, decodes it with ``msgspec.json.decode`` and answers 202 with the same body shape as
fleetstream (``{"accepted": n, "rejected": []}``). No validation, no storage, no framework.

    python benchmarks/_bare_server.py --port P
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import uvicorn

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_decode = msgspec.json.Decoder().decode
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """POST: decode the body and answer 202; GET: 200 (readiness)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        ready = b'{"status":"ready"}'
        headers = [*_HEADERS, (b"content-length", b"%d" % len(ready))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ready})
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    items = _decode(b"".join(chunks))
    body = b'{"accepted":%d,"rejected":[]}' % len(items)
    headers = [*_HEADERS, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        http="httptools",
        loop="uvloop",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
