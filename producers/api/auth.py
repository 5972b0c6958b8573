"""Bearer tokens and roles: every endpoint names the roles it allows.

``Allow("card.lock")`` is the endpoint's dependency: it authenticates the token and
checks its principal's stored roles against the use case's row of
``schemas.permissions.USE_CASES``. The use case and its roles are kept on the object, so
the role matrix test and ``cardline api routes`` read them from the app itself.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producers.api.context import ApiContext
from producers.principals import Caller, authenticate
from schemas.errors import Forbidden, Unauthorized
from schemas.permissions import roles_for

_bearer = HTTPBearer(auto_error=False, description="A token from `cardline token create`.")


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


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
    ) -> Caller:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("send Authorization: Bearer <token>")
        principal = authenticate(context(request).store, credentials.credentials)
        # The principal's stored roles are what counts, not anything the token says.
        if not principal.roles & self.roles:
            allowed = tuple(sorted(r.value for r in self.roles))
            held = ", ".join(sorted(principal.roles)) or "no role"
            raise Forbidden(
                principal.name, f"{request.method} {request.url.path} as {held}", allowed
            )
        return principal
