"""/cpr: signed card production requests from identity systems (seed 000)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from producers import cpr
from producers.api.auth import Allow, context
from producers.api.context import ApiContext
from producers.tokens import Principal
from schemas.cpr import SignedCpr
from schemas.roles import Role

router = APIRouter(tags=["cpr"])


class CprOut(BaseModel):
    user_id: int
    card_id: int
    card_state: str
    user_created: bool
    cpr_replaced: bool


@router.post("/cpr", status_code=201)
def submit_cpr(
    body: SignedCpr,
    ctx: Annotated[ApiContext, Depends(context)],
    who: Annotated[Principal, Depends(Allow(Role.REQUESTER))],
) -> CprOut:
    """A CPR signed by a configured identity system: a user and a card request, or a
    refusal with the reason (400 invalid_cpr, 409 already_exists) and nothing stored."""
    outcome = cpr.intake(ctx.store, body, keys=ctx.cpr_keys, config=ctx.cpr, policy=ctx.policy)
    return CprOut(**asdict(outcome))
