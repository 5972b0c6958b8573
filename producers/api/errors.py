"""Errors as JSON: ``{"error": {"code": ..., "message": ..., "field": ...}}``.

The status and code of a Cardline error come from this table, walked along the error's
class hierarchy, so a new subclass gets its parent's answer until it needs its own.
Anything else is a bug: 500 with a generic message, the details only in the log.
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

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
    log.exception("api.unexpected_error", path=request.url.path)
    return JSONResponse(body("internal", "internal error; see the server log"), status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.CardlineError, _cardline)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
