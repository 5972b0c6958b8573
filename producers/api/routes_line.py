"""Steering the line over HTTP (the console's buttons post here, with the CSRF header):
pause and resume a line or a station, retry a failed card, cancel a batch, set its
priority. Each is ``producers.line_control``: audited, a ``StateConflict`` (409) when
the thing is not in a state that allows it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from producers import line_control
from producers.api.auth import Allow, context
from producers.api.context import ApiContext, RowId
from producers.principals import Caller
from schemas.api import StateOut

router = APIRouter(tags=["line"])
Ctx = Annotated[ApiContext, Depends(context)]
Pauser = Annotated[Caller, Depends(Allow("line.pause"))]


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=400)


class PriorityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=0, le=line_control.MAX_PRIORITY)


class CancelOut(BaseModel):
    batch_id: int
    state: str
    cancelled: int  # cards cancelled
    at_station: int  # cards already at a station, which finish


class PriorityOut(BaseModel):
    batch_id: int
    priority: int
    cards: int  # cards not yet at a station that now carry it


def _reason(body: ReasonIn | None) -> str | None:
    return body.reason if body else None


@router.post("/lines/{line}/pause")
def pause_line(line: str, ctx: Ctx, who: Pauser, body: ReasonIn | None = None) -> StateOut:
    """Every station of the line finishes its card and takes no new one."""
    state = line_control.pause(ctx.store, "line", line, by=who.actor, reason=_reason(body))
    return StateOut(state=state)


@router.post("/lines/{line}/resume")
def resume_line(line: str, ctx: Ctx, who: Pauser, body: ReasonIn | None = None) -> StateOut:
    return StateOut(
        state=line_control.resume(ctx.store, "line", line, by=who.actor, reason=_reason(body))
    )


@router.post("/stations/{station_id}/pause")
def pause_station(station_id: str, ctx: Ctx, who: Pauser, body: ReasonIn | None = None) -> StateOut:
    """The station finishes its card and takes no new one."""
    return StateOut(
        state=line_control.pause(
            ctx.store, "station", station_id, by=who.actor, reason=_reason(body)
        )
    )


@router.post("/stations/{station_id}/resume")
def resume_station(
    station_id: str, ctx: Ctx, who: Pauser, body: ReasonIn | None = None
) -> StateOut:
    return StateOut(
        state=line_control.resume(
            ctx.store, "station", station_id, by=who.actor, reason=_reason(body)
        )
    )


@router.post("/cards/{card}/retry")
def retry_card(
    card: str,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("card.retry"))],
    body: ReasonIn | None = None,
) -> StateOut:
    """A ``failed`` card gets a new attempt budget: prepared again, queued on a new blank."""
    return StateOut(
        state=line_control.retry_card(ctx.store, card, by=who.actor, reason=_reason(body))
    )


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(
    batch_id: RowId,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("batch.cancel"))],
    body: ReasonIn | None = None,
) -> CancelOut:
    """Cancel the batch and its cards not yet at a station (those at one finish)."""
    done = line_control.cancel_batch(ctx.store, batch_id, by=who.actor, reason=_reason(body))
    return CancelOut(
        batch_id=batch_id, state="cancelled", cancelled=done.cancelled, at_station=done.at_station
    )


@router.post("/batches/{batch_id}/priority")
def batch_priority(
    batch_id: RowId,
    body: PriorityIn,
    ctx: Ctx,
    who: Annotated[Caller, Depends(Allow("batch.priority"))],
) -> PriorityOut:
    """Stations take this batch's ready cards before those of lower batches (0 is
    normal, 9 the highest). Refused to the batch's requester (four eyes)."""
    moved = line_control.set_priority(ctx.store, batch_id, body.priority, by=who.actor)
    return PriorityOut(batch_id=batch_id, priority=body.priority, cards=moved)
