"""/cards: request, issue, decide, activate, deactivate, reactivate, lock, find; and
recovery of escrowed keys onto a card."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from producers import cards, escrow
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, PageNumber
from producers.api.held import HELD, perform
from producers.principals import Caller
from producers.users import MAX_PAGE
from schemas.api import (
    CardOut,
    CardPage,
    CardPatch,
    CardRequestIn,
    CardsCreated,
    CommentIn,
    CountOut,
    LockIn,
    ReasonIn,
    RecoverIn,
    RequiredReasonIn,
    StateOut,
)

router = APIRouter(tags=["cards"])
Ctx = Annotated[ApiContext, Depends(context)]


@router.post("/cards", status_code=201)
def request_cards(
    body: CardRequestIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.request"))]
) -> CardsCreated:
    ids = cards.request_cards(
        ctx.store, body.users, by=who.actor, policy=ctx.policy, line=body.line
    )
    return CardsCreated(ids=ids, state="requested" if ctx.policy.approval_required else "approved")


@router.post("/cards/issue", status_code=201)
def issue_cards(
    body: CardRequestIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.issue"))]
) -> CardsCreated:
    ids = cards.issue_cards(ctx.store, body.users, by=who.actor, policy=ctx.policy, line=body.line)
    return CardsCreated(ids=ids, state="approved")


@router.get("/cards")
def search_cards(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.read"))],
    state: str | None = None,
    kind: str | None = None,
    user: str | None = None,
    page: PageNumber = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> CardPage:
    found = cards.search_cards(
        ctx.store, state=state, kind=kind, user=user, page=page, per_page=per_page
    )
    return CardPage(
        items=found.items,
        total=found.total,
        page=found.page,
        per_page=found.per_page,
    )


@router.get("/cards/{card}")
def get_card(card: str, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.read"))]) -> CardOut:
    return cards.get_card(ctx.store, card)


@router.patch("/cards/{card}")
def edit_card(
    card: str, body: CardPatch, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.edit"))]
) -> CardOut:
    cards.edit_card(ctx.store, card, by=who.actor, line=body.line, policy=ctx.policy)
    return cards.get_card(ctx.store, card)


@router.post("/cards/{card}/approve")
def approve_card(
    card: str, body: CommentIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.decide"))]
) -> StateOut:
    return StateOut(state=cards.approve_card(ctx.store, card, by=who.actor, comment=body.comment))


@router.post("/cards/{card}/reject")
def reject_card(
    card: str,
    body: RequiredReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.decide"))],
) -> StateOut:
    state = cards.reject_card(
        ctx.store, card, by=who.actor, reason=body.reason, comment=body.comment
    )
    return StateOut(state=state)


@router.post("/cards/{card}/postpone")
def postpone_card(
    card: str,
    body: RequiredReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.decide"))],
) -> StateOut:
    return StateOut(state=cards.postpone_card(ctx.store, card, by=who.actor, reason=body.reason))


@router.post("/cards/{card}/cancel")
def cancel_card(
    card: str,
    body: ReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.cancel"))],
) -> StateOut:
    return StateOut(state=cards.cancel_card(ctx.store, card, by=who.actor, reason=body.reason))


@router.post("/cards/{card}/activate")
def activate_card(
    card: str, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.activate"))]
) -> StateOut:
    return StateOut(state=cards.activate_card(ctx.store, card, by=who.actor))


def _count(n: int) -> CountOut:
    return CountOut(certificates=n)


@router.post("/cards/{card}/deactivate", response_model=CountOut, responses=HELD)
def deactivate_card(
    card: str, body: ReasonIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.deactivate"))]
) -> Any:
    return perform(ctx, who, "card.deactivate", card, {"reason": body.reason}, _count)


@router.post("/cards/{card}/reactivate", response_model=CountOut, responses=HELD)
def reactivate_card(
    card: str, body: ReasonIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.reactivate"))]
) -> Any:
    return perform(ctx, who, "card.reactivate", card, {"reason": body.reason}, _count)


@router.post("/cards/{card}/lock", response_model=CountOut, responses=HELD)
def lock_card(
    card: str, body: LockIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.lock"))]
) -> Any:
    return perform(ctx, who, "card.lock", card, {"reason": body.reason}, _count)


@router.post("/cards/{card}/recover-escrow")
def recover_escrow(
    card: str,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.recover"))],
    body: RecoverIn | None = None,
) -> CountOut:
    """The holder's earlier escrowed keys onto the card: all, before production; the
    chosen ones (``keys``: certificate serials), on a card in use, at its next desk."""
    serials = body.keys if body else []
    return CountOut(
        certificates=escrow.request_key_recovery(ctx.store, card, by=who.actor, serials=serials)
    )
