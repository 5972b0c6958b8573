"""Bearer tokens and roles: every endpoint names the roles it allows.

``Allow(Role.OPERATOR, ...)`` is the endpoint's dependency: it authenticates the token
and checks its role (``admin`` may do everything). The roles are kept on the object,
so the role matrix test and ``cardline api routes`` read them from the app itself.
"""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from producers.api.context import ApiContext
from producers.tokens import Principal, authenticate
from schemas.errors import Forbidden, Unauthorized
from schemas.roles import Role

_bearer = HTTPBearer(auto_error=False, description="A token from `cardline token create`.")


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


class Allow:
    """A dependency admitting a caller whose token has one of ``roles`` (or admin)."""

    def __init__(self, *roles: Role) -> None:
        self.roles = frozenset({*roles, Role.ADMIN})

    def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> Principal:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("send Authorization: Bearer <token>")
        principal = authenticate(context(request).store, credentials.credentials)
        if principal.role not in self.roles:
            allowed = tuple(sorted(r.value for r in self.roles))
            raise Forbidden(
                principal.name, f"{request.method} {request.url.path} as {principal.role}", allowed
            )
        return principal
