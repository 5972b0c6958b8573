"""Endpoints of processes that an approval step can hold (``producers.pending``): they
answer with their own result when the process ran, or 202 with the pending request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from producers import pending
from producers.api.context import ApiContext
from producers.principals import Caller


class HeldOut(BaseModel):
    """The operation waits for an approver as request ``request_id``."""

    request_id: int
    summary: str
    state: str = "pending"


HELD: dict[int | str, dict[str, Any]] = {
    202: {"model": HeldOut, "description": "Held for an approver (`[approvals]` option on)."}
}


def perform(
    ctx: ApiContext,
    who: Caller,
    process: str,
    target: str,
    params: Mapping[str, Any],
    done: Callable[[Any], Any],
) -> Any:
    """Run ``process`` as ``who``; ``done(result)`` answers when it ran."""
    outcome = pending.perform(
        ctx.store,
        process,
        target,
        params,
        by=who.actor,
        policy=ctx.policy,
        steps=ctx.approvals,
    )
    if outcome.done:
        return done(outcome.result)
    held = HeldOut(request_id=outcome.request_id or 0, summary=outcome.summary)
    return JSONResponse(held.model_dump(), status_code=202)
