"""The append-only, hash-chained audit log.

Each event's hash covers its own fields and the previous event's hash, so editing or
deleting any event breaks every hash after it. Appends lock the single ``audit_head``
row, which serialises them on PostgreSQL; on SQLite the write lock already does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from db.models import AuditEvent, AuditHead, utcnow
from schemas.errors import ConfigurationError

GENESIS_HASH = "0" * 64
# ``json.dumps(fields, separators=(",", ":"), ensure_ascii=False)``, built once.
_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _digest(event: AuditEvent) -> str:
    return _hash(
        [
            event.seq,
            event.at.isoformat(),
            event.actor,
            event.entity,
            event.entity_id,
            event.action,
            event.from_state,
            event.to_state,
            event.reason,
            event.prev_hash,
        ]
    )


def _hash(fields: list[object]) -> str:
    """The hash of one event's fields, in ``_digest``'s order (the chain's format)."""
    return hashlib.sha256(_JSON.encode(fields).encode()).hexdigest()


_HEAD_KEY = "cardline.audit_head"


def lock_audit_head(session: Session) -> AuditHead:
    """The chain's head row, locked for the rest of this transaction.

    The first append in a transaction locks it (``FOR UPDATE`` on PostgreSQL; SQLite's
    write lock is already held); later appends in the same transaction reuse it, since
    no other writer can move it until this transaction ends.
    """
    head: AuditHead | None = session.info.get(_HEAD_KEY)
    if head is not None and head in session:
        return head
    head = session.execute(
        select(AuditHead).where(AuditHead.id == 1).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        raise ConfigurationError("the audit chain has no head row: run `cardline db upgrade`")
    session.info[_HEAD_KEY] = head
    return head


def append(
    session: Session,
    *,
    actor: str,
    entity: str,
    entity_id: object,
    action: str,
    from_state: str | None,
    to_state: str,
    reason: str | None = None,
) -> AuditEvent:
    """Append one event to the chain inside the caller's transaction."""
    head = lock_audit_head(session)
    # Every backend stores microseconds exactly, so the hash re-computes after a round trip.
    at = utcnow()
    event = AuditEvent(
        seq=head.seq + 1,
        at=at,
        actor=actor,
        entity=entity,
        entity_id=str(entity_id),
        action=action,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        prev_hash=head.hash,
        hash="",
    )
    event.hash = _digest(event)
    session.add(event)
    head.seq = event.seq
    head.hash = event.hash
    return event


@dataclass(frozen=True, slots=True)
class Event:
    """One event for ``append_many``: ``append``'s arguments."""

    actor: str
    entity: str
    entity_id: object
    action: str
    from_state: str | None
    to_state: str
    reason: str | None = None


# Rows per INSERT statement: well under every backend's limit on bound parameters.
_INSERT_ROWS = 1000
_EVENTS = cast(Table, AuditEvent.__table__)


def append_many(session: Session, events: Iterable[Event]) -> int:
    """Append ``events`` to the chain in the order given, inside the caller's
    transaction; return how many. The same events, hashes and head as ``append``
    called once per event (one head lock, one timestamp for all), written a thousand
    rows per statement instead of one ORM object each."""
    head = lock_audit_head(session)
    at = utcnow()
    stamp = at.isoformat()
    seq, prev = head.seq, head.hash
    rows: list[dict[str, object]] = []
    for event in events:
        seq += 1
        entity_id = str(event.entity_id)
        fields = [seq, stamp, event.actor, event.entity, entity_id, event.action]
        digest = _hash([*fields, event.from_state, event.to_state, event.reason, prev])
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": event.actor,
                "entity": event.entity,
                "entity_id": entity_id,
                "action": event.action,
                "from_state": event.from_state,
                "to_state": event.to_state,
                "reason": event.reason,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
        if len(rows) == _INSERT_ROWS:
            session.execute(insert(_EVENTS), rows)
            rows = []
    if rows:
        session.execute(insert(_EVENTS), rows)
    count = seq - head.seq
    head.seq, head.hash = seq, prev
    return count


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    events: int
    first_bad_seq: int | None = None


def verify_chain(session: Session, *, batch: int = 2000) -> ChainReport:
    """Recompute every hash in sequence order; report the first event that does not fit.

    The head is read first: on a live line, events appended after it are newer than
    the check and are left for the next one.
    """
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    prev = GENESIS_HASH
    count = 0
    stmt = (
        select(AuditEvent)
        .where(AuditEvent.seq <= head.seq)
        .order_by(AuditEvent.seq)
        .execution_options(yield_per=batch)
    )
    for event in session.scalars(stmt):
        if event.seq != count + 1 or event.prev_hash != prev or _digest(event) != event.hash:
            return ChainReport(ok=False, events=count, first_bad_seq=event.seq)
        prev = event.hash
        count += 1
    if count != head.seq or prev != head.hash:
        return ChainReport(ok=False, events=count, first_bad_seq=count + 1)
    return ChainReport(ok=True, events=count)


def events_for(session: Session, entity: str, entity_id: object) -> list[AuditEvent]:
    stmt = (
        select(AuditEvent)
        .where(AuditEvent.entity == entity, AuditEvent.entity_id == str(entity_id))
        .order_by(AuditEvent.seq)
    )
    return list(session.scalars(stmt))
