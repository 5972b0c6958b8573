"""/approvals: what waits for a decision, and the held lifecycle requests
(``producers.pending``): approve, reject, cancel."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from producers import pending
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, RowId
from producers.principals import Caller
from schemas.api import RequiredReasonIn

router = APIRouter(tags=["approvals"])
Ctx = Annotated[ApiContext, Depends(context)]


class WaitingOut(BaseModel):
    kind: str
    id: int
    what: str
    requested_by: str
    requested_at: str
    use_case: str
    decide: str


class RequestOut(BaseModel):
    id: int
    process: str
    target: str
    summary: str
    state: str
    requested_by: str
    requested_at: str
    decided_by: str | None
    decided_at: str | None
    outcome: str | None


class DecisionOut(BaseModel):
    request_id: int
    state: str
    outcome: str


@router.get("/approvals")
def waiting(ctx: Ctx, who: Annotated[Caller, Depends(Allow("approvals.read"))]) -> list[WaitingOut]:
    """Everything waiting for an approver, oldest first; none of it may be decided by
    whoever requested it."""
    return [WaitingOut(**asdict(w)) for w in pending.waiting(ctx.store)]


@router.get("/approvals/requests")
def list_requests(
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("approvals.read"))],
    state: Annotated[
        Literal["pending", "approved", "rejected", "failed", "cancelled"] | None, Query()
    ] = None,
) -> list[RequestOut]:
    return [RequestOut(**r) for r in pending.requests(ctx.store, state=state)]


def _out(decision: pending.Decision) -> DecisionOut:
    return DecisionOut(
        request_id=decision.request_id, state=decision.state, outcome=decision.outcome
    )


@router.post("/approvals/requests/{request_id}/approve")
def approve(
    request_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(Allow("request.decide"))]
) -> DecisionOut:
    """Approve and carry out the request (``failed`` if no longer possible)."""
    return _out(pending.approve(ctx.store, request_id, by=who.actor, policy=ctx.policy))


@router.post("/approvals/requests/{request_id}/reject")
def reject(
    request_id: RowId,
    body: RequiredReasonIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("request.decide"))],
) -> DecisionOut:
    return _out(pending.reject(ctx.store, request_id, by=who.actor, reason=body.reason))


@router.post("/approvals/requests/{request_id}/cancel")
def cancel(
    request_id: RowId, ctx: Ctx, who: Annotated[Caller, Depends(Allow("request.cancel"))]
) -> DecisionOut:
    """Withdraw one's own request."""
    return _out(pending.cancel(ctx.store, request_id, by=who.actor))
