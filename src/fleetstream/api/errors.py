"""Errors → one status code each and the body ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetstream.errors import (
    BusUnavailable,
    Conflict,
    FleetstreamError,
    InvalidDefinition,
    InvalidReading,
    MalformedBody,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PreconditionFailed,
    StoreError,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[FleetstreamError], int]] = [
    (InvalidReading, 422),
    (MalformedBody, 400),
    (UnsupportedMediaType, 415),
    (PayloadTooLarge, 413),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidDefinition, 422),
    (PreconditionFailed, 412),
    (Overloaded, 503),
    (BusUnavailable, 503),
    (StoreError, 503),
]


def status_of(exc: FleetstreamError) -> int:
    """The HTTP status of an error (400 for any other client error)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error body shape."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(exc: FleetstreamError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers (``Retry-After`` on 503) of an error."""
    status = status_of(exc)
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif status == 503:
        headers["Retry-After"] = "1"
    return status, error_body(exc.code, exc.message, exc.details), headers


def install(app: FastAPI) -> None:
    """Register the handlers."""

    @app.exception_handler(FleetstreamError)
    async def _fleetstream(request: Request, exc: FleetstreamError) -> JSONResponse:
        status, body, headers = error_response(exc)
        return JSONResponse(body, status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"] if p not in ("query", "path", "body", "header"))
            problems.append({"field": where, "error": err["msg"]})
        message = "; ".join(f"{p['field']}: {p['error']}" for p in problems)
        return JSONResponse(error_body("invalid_request", message, problems), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)
