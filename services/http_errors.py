"""The error plumbing the platform's HTTP APIs share (snapshots, store sales, telemetry ingest).

Every error those APIs answer is `{"error": {"code", "message", "parameter"}}`. This module holds
that body (and its OpenAPI model), the exception that carries it, the middleware refusing large
bodies, and the handlers turning FastAPI's and Starlette's own errors into it, so that the APIs
answer alike and a fix lands in all of them. Where an API answers differently (how a validation
error names its parameter, the codes of Starlette's errors, whether a 500 is logged), it says so
through install_error_handlers' arguments.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send


class ErrorBody(BaseModel):
    code: str
    message: str
    parameter: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error answered as `status` with the JSON error body, plus `headers` (e.g. WWW-Authenticate)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        parameter: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.parameter = status, code, message, parameter
        self.headers = headers


def error_response(
    status: int,
    code: str,
    message: str,
    parameter: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "parameter": parameter}}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """413 for a body over the limit: by Content-Length, or while it is being read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, "payload_too_large", f"the body is over {self.limit} bytes", "body")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await too_large(scope, receive, send)
            return
        # A chunked body has no Content-Length: read it all, counting, then hand it on as one message.
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await too_large(scope, receive, send)
                return
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def parameter_error(exc: RequestValidationError) -> JSONResponse:
    """422 invalid_parameter naming the first error's parameter by its last location part
    (`start`, not `query.start`)."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ())]
    parameter = loc[-1] if len(loc) > 1 else (loc[0] if loc else None)
    message = f"{parameter}: {first.get('msg', 'invalid')}" if parameter else "invalid request"
    return error_response(422, "invalid_parameter", message, parameter)


# Starlette's own errors (no such route, wrong method): status -> (code, parameter); others are
# "http_error" with no parameter.
HTTP_CODES: Mapping[int, tuple[str, str | None]] = {
    404: ("not_found", None),
    405: ("method_not_allowed", None),
}


def install_error_handlers(
    app: FastAPI,
    *,
    validation_error: Callable[[RequestValidationError], JSONResponse] = parameter_error,
    http_codes: Mapping[int, tuple[str, str | None]] = HTTP_CODES,
    log: logging.Logger | None = None,
    log_message: str = "unexpected error",
) -> None:
    """Answer ApiError, FastAPI's validation errors, Starlette's HTTP errors and any other exception
    with the JSON error body. An unexpected exception is 500 naming only its type (its text may hold
    data); with `log`, it is logged there with its traceback as `log_message`."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.parameter, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, parameter = http_codes.get(exc.status_code, ("http_error", None))
        return error_response(exc.status_code, code, str(exc.detail), parameter, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if log is not None:
            log.exception(log_message)
        return error_response(500, "internal_error", f"unexpected {type(exc).__name__}")
