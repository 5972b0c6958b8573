"""/tempcards, card renewal, and device incidents (/cards/{card}/incidents, /incidents)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from producers import incidents, tempcards, unblock
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, RowId
from producers.api.held import HELD, perform
from producers.principals import Caller
from schemas.api import (
    AssignIn,
    CountOut,
    DaysIn,
    IncidentIn,
    IncidentOut,
    LockIn,
    PinResetOut,
    ReasonIn,
    RenewIn,
    StateOut,
    StockIn,
    StockOut,
    UnblockIn,
    UnblockOut,
)

router = APIRouter()
Ctx = Annotated[ApiContext, Depends(context)]


@router.post("/tempcards/stock", status_code=201, tags=["temporary cards"])
def stock_run(
    body: StockIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("tempcard.stock"))]
) -> StockOut:
    """A stock run of N temporary cards (one batch order; approve it like a batch)."""
    batch_id, ids = tempcards.request_stock(
        ctx.store, body.count, by=who.actor, policy=ctx.policy, line=body.line
    )
    return StockOut(batch_id=batch_id, ids=ids)


def _state(state: str) -> StateOut:
    return StateOut(state=state)


def _count(n: int) -> CountOut:
    return CountOut(certificates=n)


@router.post(
    "/tempcards/{card}/assign", tags=["temporary cards"], response_model=StateOut, responses=HELD
)
def assign(
    card: str, body: AssignIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("tempcard.assign"))]
) -> Any:
    params = {"user": body.user, "days": body.days}
    return perform(ctx, who, "tempcard.assign", card, params, _state)


@router.post(
    "/tempcards/{card}/extend", tags=["temporary cards"], response_model=StateOut, responses=HELD
)
def extend(
    card: str, body: DaysIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("tempcard.extend"))]
) -> Any:
    return perform(ctx, who, "tempcard.extend", card, {"days": body.days}, _state)


@router.post(
    "/tempcards/{card}/withdraw", tags=["temporary cards"], response_model=CountOut, responses=HELD
)
def withdraw(
    card: str, body: ReasonIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("tempcard.withdraw"))]
) -> Any:
    return perform(ctx, who, "tempcard.withdraw", card, {"reason": body.reason}, _count)


@router.post(
    "/tempcards/{card}/lock", tags=["temporary cards"], response_model=CountOut, responses=HELD
)
def lock(
    card: str, body: LockIn, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.lock"))]
) -> Any:
    return perform(ctx, who, "card.lock", card, {"reason": body.reason}, _count)


@router.post("/cards/{card}/unblock", tags=["cards"])
def unblock_card(
    card: str,
    body: UnblockIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.unblock"))],
) -> UnblockOut:
    """The response to the card's unblock challenge, from its admin key (audited)."""
    answer = unblock.unblock_response(ctx.store, ctx.box, card, body.challenge, by=who.actor)
    return UnblockOut(card_number=answer.card_number, response=answer.response)


@router.post("/cards/{card}/pin-reset", status_code=202, tags=["cards"])
def pin_reset(
    card: str, ctx: Ctx, who: Annotated[Caller, Depends(Allow("card.unblock"))]
) -> PinResetOut:
    """A PIN reset with the card's PUK, done when the holder next inserts it at an
    update desk; a new PIN letter follows."""
    return PinResetOut(
        update_id=unblock.request_pin_reset(ctx.store, card, by=who.actor), state="pending"
    )


@router.post("/cards/{card}/renew", tags=["cards"], response_model=StateOut, responses=HELD)
def renew(
    card: str,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.renew"))],
    body: RenewIn | None = None,
) -> Any:
    """A renewal: new keys and certificates, written when the card is next at a desk
    (options: which certificates, the same keys, escrowed keys recovered with it)."""
    opts = body or RenewIn()
    params = {
        "usages": [u.value for u in opts.usages],
        "keep_keys": opts.keep_keys,
        "recover": opts.recover,
    }
    return perform(ctx, who, "card.renew", card, params, _state)


@router.post("/cards/{card}/incidents", status_code=201, tags=["incidents"])
def declare(
    card: str,
    body: IncidentIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.incident"))],
) -> IncidentOut:
    """Declare the card forgotten, lost, stolen or damaged: it goes out of use and a
    replacement request (temporary or permanent) waits for approval. Stolen and damaged
    lock the card: they need a role that may lock it (`card.lock`); where card locks
    wait for an approver (`[approvals] card_lock`) the card is deactivated at once and
    its lock waits as the request `lock_request_id`."""
    incidents.check_may_declare(ctx.store, who, body.kind)
    incident = incidents.declare(
        ctx.store,
        card,
        body.kind,
        by=who.actor,
        policy=ctx.policy,
        steps=ctx.approvals,
        temporary=body.temporary,
        note=body.note,
    )
    return incident


@router.get("/incidents", tags=["incidents"])
def list_incidents(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("incident.read"))],
    state: str | None = None,
) -> list[IncidentOut]:
    return [i for i in incidents.list_incidents(ctx.store, state=state)]


@router.post("/incidents/{incident_id}/approve", tags=["incidents"])
def approve_incident(
    incident_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(Allow("incident.decide"))]
) -> IncidentOut:
    incident = incidents.approve(ctx.store, incident_id, by=who.actor, policy=ctx.policy)
    return incident


@router.post("/incidents/{incident_id}/cancel", tags=["incidents"])
def cancel_incident(
    incident_id: RowId,
    body: ReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.incident"))],
) -> IncidentOut:
    """The card was found: the replacement request is withdrawn."""
    incident = incidents.cancel(ctx.store, incident_id, by=who.actor, reason=body.reason)
    return incident
