"""Steering the line (the console's actions, ``cardline pause|resume``, ``card retry``,
``batch cancel|priority`` and their endpoints): each is one audited transaction.

- *Pause / resume* a line or a station: a row of ``line_pauses`` and an audit event
  (``line`` or ``station`` NAME, ``running -> paused`` and back). Pausing what is paused,
  or resuming what is not, is a ``StateConflict``.
- *Retry* a ``failed`` card: ``failed -> approved`` with a new attempt budget (only the
  attempts after this one count against ``max_attempts``), prepared again and queued.
- *Cancel* a batch: ``requested|approved -> cancelled``; its cards not yet at a station
  are cancelled a thousand per transaction (``db.batches.settle``), the ones at a
  station finish.
- *Priority* of a batch: stations claim higher first (``db.line_control``). Whoever
  requested the batch may not set it (four eyes).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db import batches as db_batches
from db.engine import Store
from db.line_control import LINE, SCOPES, STATION
from db.models import BatchOrder, Credential, LinePause, Station
from db.transition import Unversioned, record, transition
from producers.lookup import find_card
from producers.principals import check_four_eyes
from schemas.batch import LINE_NAME
from schemas.errors import NotFound, StateConflict, ValidationFailed
from schemas.messages import PrepareCard
from schemas.states import BatchState, CardState

MAX_PRIORITY = 9
_MAX_REASON = 400
# Cards whose priority still matters: not yet at a station.
_WAITING = (CardState.REQUESTED, CardState.APPROVED, CardState.READY)


def _reason(reason: str | None) -> str | None:
    reason = (reason or "").strip()
    if len(reason) > _MAX_REASON:
        raise ValidationFailed(f"at most {_MAX_REASON} characters", field="reason")
    return reason or None


def _check_target(session: Session, scope: str, name: str) -> None:
    if scope not in SCOPES:
        raise ValidationFailed(f"one of {', '.join(SCOPES)}", field="scope")
    if scope == LINE and not LINE_NAME.match(name):
        raise ValidationFailed("a line name: lower-case letters, digits, - and _", field="line")
    if scope == STATION and session.get(Station, name) is None:
        raise NotFound("station", name)


def pause(store: Store, scope: str, name: str, *, by: str, reason: str | None = None) -> str:
    """Pause a line or a station: its stations finish the card in hand and claim no
    other until it is resumed. Returns ``paused``."""
    why = _reason(reason)
    with store.tx() as s:
        _check_target(s, scope, name)
        if s.get(LinePause, (scope, name), with_for_update=True) is not None:
            raise StateConflict(scope, name, "pause", "paused", ("running",))
        s.add(LinePause(scope=scope, name=name, paused_by=by, reason=why))
        record(
            s,
            Unversioned(scope, name, before="running", after="paused"),
            "pause",
            actor=by,
            reason=why,
        )
    return "paused"


def resume(store: Store, scope: str, name: str, *, by: str, reason: str | None = None) -> str:
    """Resume a paused line or station. Returns ``running``."""
    why = _reason(reason)
    with store.tx() as s:
        if scope not in SCOPES:
            raise ValidationFailed(f"one of {', '.join(SCOPES)}", field="scope")
        row = s.get(LinePause, (scope, name), with_for_update=True)
        if row is None:
            raise StateConflict(scope, name, "resume", "running", ("paused",))
        s.delete(row)
        record(
            s,
            Unversioned(scope, name, before="paused", after="running"),
            "resume",
            actor=by,
            reason=why,
        )
    return "running"


def retry_card(store: Store, card: str, *, by: str, reason: str | None = None) -> str:
    """A ``failed`` card back to ``approved`` with a new attempt budget: prepared again
    (its escrowed key certified anew) and queued on a new blank. Returns its state."""
    why = _reason(reason)
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        spent = cred.attempt_count
        return transition(
            s,
            cred,
            "retry",
            actor=by,
            reason=why or f"new attempt budget after {spent} attempts",
            changes={"attempt_base": spent},
            messages=[PrepareCard(credential_id=cred.id)],
        )


@dataclass(frozen=True)
class Cancelled:
    batch_id: int
    cancelled: int  # cards cancelled
    at_station: int  # cards already at a station: they finish


def cancel_batch(store: Store, batch_id: int, *, by: str, reason: str | None = None) -> Cancelled:
    """Cancel a requested or approved batch and every card of it not yet at a station."""
    why = _reason(reason) or "batch cancelled"
    with store.tx() as s:
        batch = s.get(BatchOrder, batch_id, with_for_update=True)
        if batch is None:
            raise NotFound("batch", batch_id)
        transition(s, batch, "cancel", actor=by, reason=why, changes={"reason": why})
    done = db_batches.settle(store, batch_id)
    with store.read() as s:
        producing = s.scalar(
            select(func.count())
            .select_from(Credential)
            .where(Credential.batch_id == batch_id, Credential.state == CardState.PRODUCING)
        )
    return Cancelled(batch_id, done, int(producing or 0))


def set_priority(store: Store, batch_id: int, priority: int, *, by: str) -> int:
    """Set a batch's priority (0 normal .. ``MAX_PRIORITY``): its cards not yet at a
    station are claimed before those of lower batches. Returns how many cards it moved.
    Refused to the batch's requester (four eyes)."""
    if not 0 <= priority <= MAX_PRIORITY:
        raise ValidationFailed(f"between 0 and {MAX_PRIORITY}", field="priority")
    with store.tx() as s:
        batch = s.get(BatchOrder, batch_id, with_for_update=True)
        if batch is None:
            raise NotFound("batch", batch_id)
        check_four_eyes(by, batch.requested_by, f"the priority of batch {batch_id}")
        live = (BatchState.IMPORTING, BatchState.REQUESTED, BatchState.APPROVED)
        record(
            s,
            batch,
            "priority",
            actor=by,
            reason=f"priority {batch.priority} -> {priority}",
            expect=live,
            changes={"priority": priority},
        )
        # The cards carry a copy for the stations' pick; priority is not a state, and
        # the batch's event above is the audited change.
        moved = s.execute(
            update(Credential)
            .where(Credential.batch_id == batch_id, Credential.state.in_(_WAITING))
            .values(priority=priority)
            .execution_options(synchronize_session=False)
        )
        return int(moved.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE
