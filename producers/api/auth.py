"""Bearer tokens, console sessions and roles: every endpoint names the roles it allows.

``Allow("card.lock")`` is the endpoint's dependency: it authenticates the caller and
checks its principal's stored roles against the use case's row of
``schemas.permissions.USE_CASES``. The use case and its roles are kept on the object, so
the role matrix test and ``cardline api routes`` read them from the app itself.

A caller is authenticated by ``Authorization: Bearer <token>`` or, without one, by the
console's session cookie (``producers.console_auth``). A browser sends that cookie on
its own, so a cookie request that changes something (any method but GET, HEAD and
OPTIONS) must also carry the session's CSRF token in ``X-CSRF-Token``. Bearer requests
need none: no browser adds an Authorization header to a forged request.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from producers.api.context import ApiContext
from producers.console_auth import check_csrf, session_caller
from producers.principals import Caller, audit_refusal, authenticate
from schemas.errors import Forbidden, Unauthorized
from schemas.permissions import roles_for

SESSION_COOKIE = "cardline_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(auto_error=False, description="A token from `cardline token create`.")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    description=f"The console's session (POST /console/login); changes need {CSRF_HEADER}.",
)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def console_caller(request: Request, cookie: str | None) -> Caller:
    """The principal of the request's console session, its CSRF token checked for a
    request that changes something; Unauthorized without a live session."""
    if cookie is None:
        raise Unauthorized("send Authorization: Bearer <token>, or log in to the console")
    store = context(request).store
    if request.method not in SAFE_METHODS:
        check_csrf(store, cookie, request.headers.get(CSRF_HEADER))
    return session_caller(store, cookie)


def signed_in(request: Request, cookie: str | None = Depends(_cookie)) -> Caller:
    """A dependency admitting any principal with a live console session, whatever its
    roles: the console's own endpoints (who am I, log out)."""
    return console_caller(request, cookie)


class Allow:
    """A dependency admitting a caller whose principal holds a role that may run
    ``use_case`` (``schemas.permissions``, the one table of permissions)."""

    def __init__(self, use_case: str) -> None:
        self.use_case = use_case
        self.roles = roles_for(use_case)  # a KeyError here: a use case not in the table

    def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
        cookie: str | None = Depends(_cookie),
    ) -> Caller:
        if credentials is not None and credentials.scheme.lower() == "bearer":
            principal = authenticate(context(request).store, credentials.credentials)
        else:
            principal = console_caller(request, cookie)
        request.state.caller = principal  # for the audit of a refusal further on
        # The principal's stored roles are what counts, not anything the token says.
        if not principal.roles & self.roles:
            allowed = tuple(sorted(r.value for r in self.roles))
            held = ", ".join(sorted(principal.roles)) or "no role"
            error = Forbidden(
                principal.name, f"{request.method} {request.url.path} as {held}", allowed
            )
            audit_refusal(
                context(request).store,
                principal,
                f"{request.method} {request.url.path}",
                str(error),
            )
            raise error
        return principal
