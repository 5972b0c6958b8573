"""/console pages: overview, stations, batches, a card, alerts, and the login form.

Each page is behind the same use case as the API it shows (``PageAllow``: the console's
session cookie, or a bearer token): the overview and stations ``line.status``, batches
``batch.read``, a card ``card.read``, alerts ``alerts.read``. A browser without a live
session is sent to the login form; a principal whose roles do not allow a page gets a
403 page (and the refusal is audited, as for the API). A request with the header
``X-Console-Fragment: 1`` gets only the page's live part: ``console.js`` polls it every
``POLL_MS`` and swaps it in. The actions are buttons that POST to the API
(``producers.api.routes_line``) with the session's CSRF token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from producers import console
from producers.api.auth import Allow, _bearer, _cookie, context
from producers.api.context import ApiContext, PageNumber, RowId
from producers.lookup import find_card
from producers.principals import Caller
from schemas.errors import Forbidden, NotFound, Unauthorized
from schemas.permissions import may

HERE = Path(__file__).parent
POLL_MS = 1000  # a change shows within 2 s: one poll plus a render
FRAGMENT_HEADER = "X-Console-Fragment"
# No script, style or frame from anywhere else; no inline script at all.
CSP = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"

templates = Jinja2Templates(directory=HERE / "templates")


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min``, ``2.5 h``, ``3 d``: how long, for a person."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


templates.env.filters["duration"] = duration
router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
Ctx = Annotated[ApiContext, Depends(context)]


class _LoginFirst(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


class _NotAllowed(Exception):
    def __init__(self, error: Forbidden) -> None:
        self.error = error


class PageAllow(Allow):
    """``Allow`` for a page: no session sends a browser (``Accept: text/html``) to the
    login form, a role that may not see the page gets the 403 page (the refusal audited
    by ``Allow``); other clients get the API's JSON 401 and 403."""

    def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
        cookie: str | None = Depends(_cookie),
    ) -> Caller:
        # A browser gets pages; anything else (a script, the tests) the API's JSON errors.
        browser = "text/html" in request.headers.get("accept", "")
        try:
            return super().__call__(request, credentials, cookie)
        except Unauthorized as exc:
            if not browser:
                raise
            raise _LoginFirst(request.url.path) from exc
        except Forbidden as exc:
            if not browser:
                raise
            raise _NotAllowed(exc) from exc


def _page(
    request: Request, name: str, who: Caller | None, status: int = 200, **values: Any
) -> Response:
    fragment = request.headers.get(FRAGMENT_HEADER) == "1"
    response = templates.TemplateResponse(
        request,
        name,
        {
            "layout": "fragment.html" if fragment else "base.html",
            "who": who,
            "may": (lambda use_case: who is not None and may(who.roles, use_case)),
            "poll_ms": POLL_MS,
            **values,
        },
        status_code=status,
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/console") -> Response:
    """The login form (public): it posts to POST /console/login and keeps the CSRF
    token the login returns for the console's actions."""
    target = next if next.startswith("/console") and "//" not in next else "/console"
    return _page(request, "login.html", None, target=target)


@router.get("", response_class=HTMLResponse)
def overview_page(
    request: Request, ctx: Ctx, who: Annotated[Caller, Depends(PageAllow("line.status"))]
) -> Response:
    """Cards by state, finished in 5 and 60 minutes, spoil rate, queues, open alerts."""
    with ctx.store.read() as s:
        view = console.overview(s, ctx.alerts)
        lines = console.lines(s)
    return _page(request, "overview.html", who, view=view, lines=lines, page="overview")


@router.get("/stations", response_class=HTMLResponse)
def stations_page(
    request: Request, ctx: Ctx, who: Annotated[Caller, Depends(PageAllow("line.status"))]
) -> Response:
    """Each station's status, card in hand, throughput, spoils by fault, blanks used."""
    with ctx.store.read() as s:
        rows = console.stations(s, ctx.alerts)
        lines = console.lines(s)
    return _page(request, "stations.html", who, stations=rows, lines=lines, page="stations")


@router.get("/batches", response_class=HTMLResponse)
def batches_page(
    request: Request,
    ctx: Ctx,
    who: Annotated[Caller, Depends(PageAllow("batch.read"))],
    page: PageNumber = 1,
) -> Response:
    """Batches, newest first, 20 a page: progress, counts, rejects, expected finish."""
    with ctx.store.read() as s:
        view = console.batches(ctx.store, s, page=page)
    return _page(request, "batches.html", who, view=view, page="batches")


@router.get("/batches/{batch_id}/rejects")
def batch_rejects(
    batch_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(PageAllow("batch.read"))]
) -> Response:
    """The batch's reject report (CSV: line, field, reason of every rejected row)."""
    with ctx.store.read() as s:
        path = console.reject_report(s, batch_id, ctx.rejects_dir)
    if path is None:
        raise NotFound("reject report of batch", batch_id)
    return FileResponse(path, media_type="text/csv", filename=path.name)


@router.get("/cards", response_class=HTMLResponse)
def cards_page(
    request: Request,
    ctx: Ctx,
    who: Annotated[Caller, Depends(PageAllow("card.read"))],
    q: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    """Find a card by number, holder e-mail or holder name."""
    with ctx.store.read() as s:
        found = console.find_cards(s, q) if q else []
    if len(found) == 1:
        return RedirectResponse(f"/console/cards/{found[0]['id']}", status_code=303)
    return _page(request, "cards.html", who, q=q, found=found, page="cards")


@router.get("/cards/{card}", response_class=HTMLResponse)
def card_page(
    card: str,
    request: Request,
    ctx: Ctx,
    who: Annotated[Caller, Depends(PageAllow("card.read"))],
) -> Response:
    """A card's timeline: audit events, attempts, certificates, updates, letter."""
    with ctx.store.read() as s:
        view = console.card_timeline(s, find_card(s, card))
        return _page(request, "card.html", who, view=view, page="cards")


@router.get("/alerts", response_class=HTMLResponse)
def alerts_page(
    request: Request, ctx: Ctx, who: Annotated[Caller, Depends(PageAllow("alerts.read"))]
) -> Response:
    """The open alerts, most severe and oldest first, each with what to do."""
    from db.alerts import open_alerts

    with ctx.store.read() as s:
        found = open_alerts(s, ctx.alerts)
    return _page(request, "alerts.html", who, alerts=found, page="alerts")


def install(app: FastAPI) -> None:
    """The pages' static files (public: the script and the style sheet) and the answers
    for a page asked without a session or with too few roles (the router itself is
    included with the API's)."""
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")

    async def login_first(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _LoginFirst)
        if request.headers.get(FRAGMENT_HEADER) == "1":
            return Response(status_code=401)  # the script goes to the login form
        return RedirectResponse(f"/console/login?next={exc.path}", status_code=303)

    async def not_allowed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _NotAllowed)
        return _page(request, "refused.html", None, status=403, message=str(exc.error))

    app.add_exception_handler(_LoginFirst, login_first)
    app.add_exception_handler(_NotAllowed, not_allowed)
