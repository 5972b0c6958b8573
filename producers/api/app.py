"""The FastAPI application: routers, error handling, and the status endpoints.

``create_app(ctx)`` builds one app over one status store; ``cardline api`` serves it
with uvicorn. OpenAPI is at ``/openapi.json``; each operation lists the roles it
allows under ``x-roles``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from db.summary import summarise
from producers.api import (
    errors,
    routes_approvals,
    routes_batches,
    routes_bureaus,
    routes_cards,
    routes_console,
    routes_cpr,
    routes_life,
    routes_line,
    routes_monitoring,
    routes_pki,
    routes_principals,
    routes_users,
)
from producers.api.auth import Allow, context
from producers.api.console import pages as console_pages
from producers.api.context import ApiContext
from producers.principals import Caller
from schemas.roles import Role

Ctx = Annotated[ApiContext, Depends(context)]
EVERY_ROLE = Allow("line.status")


def roles_of(route: APIRoute) -> frozenset[Role] | None:
    """The roles an operation allows (None: public)."""
    for dependency in route.dependant.dependencies:
        if isinstance(dependency.call, Allow):
            return dependency.call.roles
    return None


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every operation, also inside included routers (FastAPI may keep those nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None) or getattr(route, "routes", None)
        if isinstance(nested, APIRouter):
            yield from api_routes(nested.routes)
        elif isinstance(nested, list):
            yield from api_routes(nested)


def _mark_roles(routes: Iterable[APIRoute]) -> None:
    for route in routes:
        roles = roles_of(route)
        extra = dict(route.openapi_extra or {})
        extra["x-roles"] = sorted(r.value for r in roles) if roles else ["public"]
        route.openapi_extra = extra


def create_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(
        title="Cardline",
        summary="Smart card production: users, cards, certificates, soft tokens.",
        version="0.1.0",
        dependencies=[Depends(errors.refuse_nul)],
    )
    app.state.ctx = ctx
    errors.install(app)

    @app.get("/health", tags=["status"])
    def health() -> dict[str, str]:
        """Liveness; no token needed."""
        return {"status": "ok"}

    @app.get("/status", tags=["status"])
    def status(ctx: Ctx, who: Annotated[Caller, Depends(EVERY_ROLE)]) -> dict[str, Any]:
        """Counts by state, stations, queue depth (as ``cardline status``).

        The audit chain is not verified here: that reads every event, too slow for a
        status poll. ``audit_chain_ok`` is therefore ``null`` and ``audit_chain_checked``
        ``false``; ``audit_events`` is the chain head's count. ``cardline status``
        verifies the chain and reports ``true`` or ``false``."""
        with ctx.store.read() as s:
            return summarise(s, verify_audit=False).as_dict()

    for module in (
        routes_monitoring,
        routes_users,
        routes_cards,
        routes_life,
        routes_batches,
        routes_bureaus,
        routes_pki,
        routes_cpr,
        routes_console,
        routes_approvals,
        routes_line,
        console_pages,
        routes_principals,
    ):
        _mark_roles(api_routes(module.router.routes))
        app.include_router(module.router)
    console_pages.install(app)  # the console's static files and its login redirect
    _mark_roles(r for r in app.router.routes if isinstance(r, APIRoute))
    return app
