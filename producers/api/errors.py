"""Errors as JSON: ``{"error": {"code": ..., "message": ..., "field": ...}}``.

The status and code of a Cardline error come from this table, walked along the error's
class hierarchy, so a new subclass gets its parent's answer until it needs its own.
Anything else is a bug: 500 with a generic message, the details only in the log.

Input no endpoint should see is refused here too, as a 422 naming the field: a NUL
character in a path or query parameter (``refuse_nul``, an app-wide dependency) or in a
JSON body, and a JSON object that repeats a key (``RefuseAmbiguousJson``, a middleware
that reads a JSON body before FastAPI does). PostgreSQL cannot store a NUL in text, so
one reaching the store was a 500 there; a repeated key means whatever the last parser
to read it decides, so it means nothing.
"""

from __future__ import annotations

import email.message
import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas import errors as e

log = structlog.get_logger(__name__)

STATUS: dict[type[e.CardlineError], tuple[int, str]] = {
    e.ValidationFailed: (422, "validation_failed"),
    e.InvalidCpr: (400, "invalid_cpr"),
    e.NotFound: (404, "not_found"),
    e.Unauthorized: (401, "unauthorized"),
    e.Forbidden: (403, "forbidden"),
    e.FourEyesViolation: (403, "four_eyes"),
    e.ApprovalRequired: (403, "approval_required"),
    e.Refused: (403, "refused"),
    e.StateConflict: (409, "state_conflict"),
    e.AlreadyExists: (409, "already_exists"),
    e.ConflictError: (409, "conflict"),
    e.PermanentError: (400, "bad_request"),
    e.TransientError: (503, "unavailable"),
    e.ConfigurationError: (500, "configuration"),
    e.CardlineError: (500, "error"),
}


def status_of(exc: e.CardlineError) -> tuple[int, str]:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500, "error"


def body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


async def _cardline(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.CardlineError)
    status, code = status_of(exc)
    caller = getattr(request.state, "caller", None)
    if caller is not None and isinstance(exc, (e.FourEyesViolation, e.Refused)):
        # A proved principal refused by the four-eyes rule or by ownership: audited (the
        # refused operation's own transaction was rolled back, so nothing else is).
        from producers.principals import audit_refusal

        what = f"{request.method} {request.url.path}"
        await run_in_threadpool(audit_refusal, request.app.state.ctx.store, caller, what, str(exc))
    field = getattr(exc, "field", None)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": str(getattr(exc, "retry_after_s", e.RETRY_AFTER_S))}
    return JSONResponse(body(code, str(exc), field), status_code=status, headers=headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
    return JSONResponse(body("validation_failed", message, field), status_code=422)


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    from db.engine import is_transient

    if is_transient(exc):  # the store busy (SQLite's lock, a PostgreSQL lock timeout) or away
        log.warning("api.store_busy", path=request.url.path, error=type(exc).__name__)
        return JSONResponse(
            body("unavailable", "the status store is busy; retry shortly"),
            status_code=503,
            headers={"Retry-After": str(e.RETRY_AFTER_S)},
        )
    log.exception("api.unexpected_error", path=request.url.path)
    return JSONResponse(body("internal", "internal error; see the server log"), status_code=500)


# --- input refused at the edge ----------------------------------------------------------

NUL = "\x00"


def refuse_nul(request: Request) -> None:
    """No path or query parameter (name or value) holds a NUL character."""
    for name, value in [*request.path_params.items(), *request.query_params.multi_items()]:
        if NUL in name or NUL in str(value):
            raise e.ValidationFailed("contains a NUL byte", field=None if NUL in name else name)


class _Object(dict[str, Any]):
    """A JSON object as parsed, remembering the first key it repeats."""

    repeated: str | None = None


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    found = _Object()
    for key, value in pairs:
        if key in found and found.repeated is None:
            found.repeated = key
        found[key] = value
    return found


def json_problem(data: bytes) -> tuple[str | None, str] | None:
    """The first place (a dotted field, None for the body itself) where a JSON document
    holds a NUL character or repeats a key, and what is wrong there. None when it does
    neither, or is not JSON at all: FastAPI then answers it as it always has."""
    try:
        document = json.loads(data, object_pairs_hook=_object)
    except (ValueError, RecursionError):
        return None
    todo: list[tuple[tuple[str, ...], Any]] = [((), document)]
    while todo:  # depth first in document order, without recursion
        path, value = todo.pop()
        where = ".".join(path) or None
        if isinstance(value, str) and NUL in value:
            return where, "contains a NUL byte"
        if isinstance(value, _Object):
            if any(NUL in key for key in value):
                return where, "a key contains a NUL byte"
            if value.repeated is not None:
                return ".".join((*path, value.repeated)), "repeated key; send each key once"
            todo.extend(((*path, key), item) for key, item in reversed(value.items()))
        elif isinstance(value, list):
            todo.extend(((*path, str(i)), item) for i, item in reversed(list(enumerate(value))))
    return None


def _parsed_as_json(scope: Scope) -> bool:
    """Whether FastAPI may parse this request's body as JSON: ``application/json`` or
    ``application/*+json`` (``fastapi.routing``'s own test), or no content type at all
    (parsed as JSON when strict content types are turned off)."""
    headers = dict(scope.get("headers") or ())
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    if not content_type:
        return True
    parsed = email.message.Message()
    parsed["content-type"] = content_type
    subtype = parsed.get_content_subtype()
    return parsed.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(data: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then listens on."""
    pending = [{"type": "http.request", "body": data, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class RefuseAmbiguousJson:
    """ASGI middleware: a JSON body with a NUL character or a repeated key anywhere is
    answered 422 naming the place. Other bodies (a CSV upload) stream on untouched; a
    JSON body, which FastAPI reads whole anyway, is read once and handed on as read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _parsed_as_json(scope):
            await self.app(scope, receive, send)
            return
        data = await _read_body(receive)
        if data is None:
            return
        problem = json_problem(data) if data else None
        if problem is not None:
            field, reason = problem
            message = f"{field}: {reason}" if field else f"the JSON body: {reason}"
            refusal = JSONResponse(body("validation_failed", message, field), status_code=422)
            await refusal(scope, receive, send)
            return
        await self.app(scope, _replay(data, receive), send)


def install(app: FastAPI) -> None:
    app.add_middleware(RefuseAmbiguousJson)
    app.add_exception_handler(e.CardlineError, _cardline)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
