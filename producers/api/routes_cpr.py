"""/cpr: signed card production requests from identity systems (seed 000)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from producers import cpr
from producers.api.auth import Allow, context
from producers.api.context import ApiContext
from producers.principals import Caller
from schemas.cpr import CprOutcome, SignedCpr

router = APIRouter(tags=["cpr"])


@router.post("/cpr", status_code=201)
def submit_cpr(
    body: SignedCpr,
    ctx: Annotated[ApiContext, Depends(context)],
    who: Annotated[Caller, Depends(Allow("cpr.submit"))],
) -> CprOutcome:
    """A CPR signed by a configured identity system and submitted by one of its
    principals: a user and a card request, or a refusal with the reason (400
    invalid_cpr, 403 refused, 409 already_exists or conflict) and nothing stored."""
    outcome = cpr.intake(
        ctx.store, body, keys=ctx.cpr_keys, config=ctx.cpr, policy=ctx.policy, caller=who
    )
    return outcome
