"""/console: log in with a name and a password, ask who is signed in, log out.

A login sets the session cookie (HttpOnly, SameSite=Strict, Secure over https) and
returns the session's CSRF token in its body, once: the console keeps it and sends it
as ``X-CSRF-Token`` with every request that changes something. The password travels in
the body only and is never echoed, logged or kept.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from db.secrets import Secret
from producers import console_auth
from producers.api.auth import SESSION_COOKIE, context, signed_in
from producers.api.context import ApiContext
from producers.principals import Caller, login

router = APIRouter(prefix="/console", tags=["console"])
Ctx = Annotated[ApiContext, Depends(context)]
SignedIn = Annotated[Caller, Depends(signed_in)]


class LoginIn(BaseModel):
    # hide_input_in_errors: a validation error's text never shows what was sent.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(max_length=200)
    password: SecretStr = Field(max_length=1024)  # scrypt would take any length: cap it


class SessionOut(BaseModel):
    name: str
    roles: list[str]


class LoginOut(SessionOut):
    csrf_token: str  # shown once; ``X-CSRF-Token`` of every request that changes something


def _set_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    """The session cookie, with the same attributes when set and when dropped."""
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


@router.post("/login")
def console_login(body: LoginIn, request: Request, response: Response, ctx: Ctx) -> LoginOut:
    """Start a console session; 401, the same for every failure, otherwise."""
    caller = login(ctx.store, body.name, Secret(body.password.get_secret_value()))
    token, csrf = console_auth.start_session(ctx.store, caller)
    _set_cookie(request, response, token.reveal(), int(console_auth.LIFETIME.total_seconds()))
    response.headers["Cache-Control"] = "no-store"
    return LoginOut(name=caller.name, roles=sorted(caller.roles), csrf_token=csrf.reveal())


@router.get("/session")
def console_session(who: SignedIn) -> SessionOut:
    """Who is signed in. The CSRF token is not sent again: the console keeps the one
    its login returned (a lost one means logging in again)."""
    return SessionOut(name=who.name, roles=sorted(who.roles))


@router.post("/logout", status_code=204)
def console_logout(request: Request, response: Response, ctx: Ctx, who: SignedIn) -> None:
    """End the session (it needs the cookie and its CSRF token) and drop the cookie."""
    console_auth.end_session(ctx.store, request.cookies[SESSION_COOKIE], by=who.actor)
    _set_cookie(request, response, "", 0)
