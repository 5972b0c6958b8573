"""What operators steer the line with, as the stations read it: paused lines and
stations, and which ready card a station takes next.

A pause is a row of ``line_pauses`` (scope ``line`` or ``station``): a station checks it
before it takes a message from its queue and ``db.production.claim`` refuses a claim
while it is there, so a paused station finishes the card in hand and starts no other.
Pausing and resuming are audited by whoever does it (``producers.line_control``).

Priority lives on the cards (copied from their batch): a station given any message of
its line claims the oldest ``ready`` card of the line's highest priority. With every
priority equal (the default) that is the message's own card, as before; a higher batch
overtakes what is queued, and the message of the card it overtook is used for another
card of the line later. Two index reads (``ix_credentials_line_queue``) per pick.
"""

from __future__ import annotations

from sqlalchemy import String, cast, exists, func, select
from sqlalchemy.orm import Session

from db.models import Attention, Credential, LinePause
from schemas.states import CardState

LINE, STATION = "line", "station"
SCOPES = (LINE, STATION)


def pause_of(session: Session, *, station_id: str, line: str) -> LinePause | None:
    """The pause that holds this station (its own, or its line's), or None."""
    return session.scalars(
        select(LinePause)
        .where(
            ((LinePause.scope == STATION) & (LinePause.name == station_id))
            | ((LinePause.scope == LINE) & (LinePause.name == line))
        )
        .order_by(LinePause.scope.desc())  # the station's own first
        .limit(1)
    ).first()


def pauses(session: Session) -> list[LinePause]:
    return list(session.scalars(select(LinePause).order_by(LinePause.scope, LinePause.name)))


def next_card(session: Session, line: str, *, preferred: int) -> int | None:
    """The card a station of ``line`` should claim, given a message for ``preferred``:
    that card when it is ``ready`` and nothing of a higher priority is, otherwise the
    oldest ready card of the highest priority (None when no card is ready)."""
    ready = (Credential.state == CardState.READY, Credential.line == line)
    top = session.scalar(select(func.max(Credential.priority)).where(*ready))
    if top is None:
        return None
    own = session.execute(
        select(Credential.state, Credential.priority, Credential.line).where(
            Credential.id == preferred
        )
    ).first()
    own_ready = own is not None and own[0] == CardState.READY and own[2] == line
    if own is not None and own_ready and own[1] >= top:
        return preferred
    flagged = exists(
        select(Attention.id).where(
            Attention.entity == "credential",
            Attention.entity_id == cast(Credential.id, String),
            Attention.resolved_at.is_(None),
        )
    )
    best = session.scalar(
        select(Credential.id)
        .where(*ready, Credential.priority == top, ~flagged)
        .order_by(Credential.id)
        .limit(1)
    )
    # Only cards waiting for a person at the top: the message's own card, if it may go.
    return best if best is not None or not own_ready else preferred
