"""Counts that describe the line: what ``cardline status`` and the demo summary show."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, and_, cast, exists, func, or_, select
from sqlalchemy.orm import Session

from db import checkpoints, outbox
from db.attention import open_items
from db.audit import verify_chain
from db.checkpoints import CheckpointKey
from db.models import (
    Attention,
    AuditHead,
    CardUpdate,
    Certificate,
    Credential,
    ProductionAttempt,
    SoftToken,
    Station,
)
from schemas.messages import line_queue
from schemas.states import (
    IN_PRODUCTION,
    AttemptState,
    CardState,
    CertState,
    SoftTokenState,
    TempCardState,
    UpdateKind,
    UpdateState,
)

# A card in these states has a holder who gets a PIN letter.
PIN_LETTER_STATES = (CardState.ACTIVE, CardState.ISSUED, TempCardState.ASSIGNED)


def _counts(session: Session, column: Any, *where: Any) -> dict[str, int]:
    stmt = select(column, func.count()).group_by(column)
    for clause in where:
        stmt = stmt.where(clause)
    return {str(k): int(v) for k, v in session.execute(stmt).all()}


@dataclass
class LineSummary:
    cards: dict[str, int]
    attempts: dict[str, int]
    blanks_used: int
    certificates: dict[str, int]
    audit_chain_ok: bool | None  # None: not verified (``summarise(verify_audit=False)``)
    audit_events: int
    outbox_unsent: int
    letters_pending: int
    soft_tokens: dict[str, int] = field(default_factory=dict)
    softtokens_pending: int = 0
    stations: list[dict[str, Any]] = field(default_factory=list)
    queues: dict[str, int] = field(default_factory=dict)
    needs_attention: list[dict[str, Any]] = field(default_factory=list)
    blocked: int = 0  # cards in production held by an open attention item
    # Whether the chain was also checked against its signed checkpoints (only with the
    # checkpoint key), how far it is sealed, and when a verification last passed.
    audit_checkpoints_checked: bool = False
    audit_sealed_seq: int | None = None
    audit_verified_at: str | None = None
    audit_problem: str | None = None

    @property
    def in_production(self) -> int:
        return sum(self.cards.get(s, 0) for s in IN_PRODUCTION)

    @property
    def drained(self) -> bool:
        """No card waits for the line, no message waits to be sent, no letter or soft
        token is due, nothing needs a person."""
        return (
            self.in_production == 0
            and self.outbox_unsent == 0
            and self.letters_pending == 0
            and self.softtokens_pending == 0
            and not self.needs_attention
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "cards": self.cards,
            "attempts": self.attempts,
            "blanks_used": self.blanks_used,
            "certificates": self.certificates,
            "audit_chain_ok": self.audit_chain_ok,
            "audit_chain_checked": self.audit_chain_ok is not None,
            "audit_events": self.audit_events,
            "audit_checkpoints_checked": self.audit_checkpoints_checked,
            "audit_sealed_seq": self.audit_sealed_seq,
            "audit_verified_at": self.audit_verified_at,
            "audit_problem": self.audit_problem,
            "outbox_unsent": self.outbox_unsent,
            "letters_pending": self.letters_pending,
            "soft_tokens": self.soft_tokens,
            "softtokens_pending": self.softtokens_pending,
            "stations": self.stations,
            "queues": self.queues,
            "needs_attention": self.needs_attention,
        }


def progress(session: Session) -> tuple[dict[str, int], int, int]:
    """Cheap counts for a progress bar: cards per state, unsent messages, deliveries due
    (PIN letters not yet written, soft tokens approved but not yet issued or delivered,
    cards waiting for new certificates)."""
    return (
        _counts(session, Credential.state),
        outbox.unsent_count(session),
        _letters_pending(session) + _softtokens_pending(session) + _recertify_pending(session),
    )


def waiting_for_bureau(session: Session, lines: tuple[str, ...]) -> int:
    """Ready cards on lines a service bureau makes: they wait for its next order file,
    not for the line."""
    if not lines:
        return 0
    stmt = (
        select(func.count())
        .select_from(Credential)
        .where(Credential.state == CardState.READY, Credential.line.in_(lines))
    )
    return int(session.scalar(stmt) or 0)


def blocked_in_production(session: Session) -> int:
    """Cards in production that wait for a person (an open attention item), not the line."""
    stmt = (
        select(func.count())
        .select_from(Credential)
        .where(
            Credential.state.in_(list(IN_PRODUCTION)),
            exists(
                select(Attention.id).where(
                    Attention.entity == "credential",
                    Attention.entity_id == cast(Credential.id, String),
                    Attention.resolved_at.is_(None),
                )
            ),
        )
    )
    return int(session.scalar(stmt) or 0)


def attention_list(session: Session) -> list[dict[str, Any]]:
    return [
        {
            "id": a.id,
            "entity": a.entity,
            "entity_id": a.entity_id,
            "wait": a.wait,
            "reason": a.reason,
            "actor": a.actor,
            "since": a.created_at.isoformat(),
        }
        for a in open_items(session)
    ]


def _recertify_pending(session: Session) -> int:
    stmt = (
        select(func.count())
        .select_from(Credential)
        .where(Credential.recertify_requested_at.is_not(None))
    )
    return int(session.scalar(stmt) or 0)


def _softtokens_pending(session: Session) -> int:
    stmt = (
        select(func.count())
        .select_from(SoftToken)
        .where(
            or_(
                SoftToken.state == SoftTokenState.APPROVED,
                and_(SoftToken.state == SoftTokenState.ISSUED, SoftToken.p12_path.is_(None)),
            )
        )
    )
    return int(session.scalar(stmt) or 0)


def awaiting_activation() -> Any:
    """A card a service bureau delivered whose chip a desk has not personalised yet:
    its PIN letter goes with the activation, not before."""
    return exists(
        select(CardUpdate.id).where(
            CardUpdate.credential_id == Credential.id,
            CardUpdate.kind == UpdateKind.ACTIVATE,
            CardUpdate.state.in_((UpdateState.PENDING, UpdateState.IN_PROGRESS)),
        )
    )


def _letters_pending(session: Session) -> int:
    stmt = (
        select(func.count())
        .select_from(Credential)
        .where(
            Credential.state.in_(PIN_LETTER_STATES),
            Credential.pin_letter_path.is_(None),
            ~awaiting_activation(),
        )
    )
    return int(session.scalar(stmt) or 0)


def queue_depths(session: Session) -> dict[str, int]:
    """Work waiting at each stage, from the store (the broker may be in another process):
    ``prepare`` (approved cards), ``line.<name>`` (ready cards per line), ``outbox``."""
    depths = {"prepare": 0, "outbox": outbox.unsent_count(session)}
    depths["prepare"] = int(
        session.scalar(
            select(func.count())
            .select_from(Credential)
            .where(Credential.state == CardState.APPROVED)
        )
        or 0
    )
    ready = select(Credential.line, func.count()).where(Credential.state == CardState.READY)
    for line, count in session.execute(ready.group_by(Credential.line)).all():
        depths[line_queue(line)] = int(count)
    return depths


def _audit(session: Session, key: CheckpointKey | None) -> tuple[bool, int, str | None]:
    """The whole chain recomputed from genesis, as it always was; with the checkpoint
    key, also every checkpoint's MAC and that the chain passes through each one, which
    catches an edit whose hashes and head were recomputed."""
    if key is None:
        chain = verify_chain(session)
        problem = None if chain.ok else f"audit chain broken at event {chain.first_bad_seq}"
        return chain.ok, chain.events, problem
    report = checkpoints.verify(session, key, full=True)
    return report.ok, report.events_read, report.problem


def summarise(
    session: Session, *, verify_audit: bool = True, checkpoint_key: CheckpointKey | None = None
) -> LineSummary:
    cards = _counts(session, Credential.state)
    attempts = {s.value: 0 for s in (AttemptState.SUCCEEDED, AttemptState.SPOILED)}
    attempts.update(_counts(session, ProductionAttempt.state))
    certificates = {s.value: 0 for s in CertState}
    certificates.update(_counts(session, Certificate.state))
    chain = _audit(session, checkpoint_key) if verify_audit else None
    sealed = checkpoints.seal_status(session)
    stations = [
        {
            "id": st.id,
            "line": st.line,
            "status": st.status,
            "cards_done": st.cards_done,
            "cards_spoiled": st.cards_spoiled,
            "heartbeat_at": st.heartbeat_at.isoformat(),
        }
        for st in session.scalars(select(Station).order_by(Station.id))
    ]
    return LineSummary(
        cards=cards,
        attempts=attempts,
        blanks_used=sum(attempts.values()),
        certificates=certificates,
        # Unverified, the chain is neither good nor broken: say so, and count its events
        # from the head row (what a verification of an intact chain would count).
        audit_chain_ok=chain[0] if chain else None,
        audit_events=chain[1] if chain else _head_seq(session),
        outbox_unsent=outbox.unsent_count(session),
        letters_pending=_letters_pending(session),
        soft_tokens=_counts(session, SoftToken.state),
        softtokens_pending=_softtokens_pending(session),
        stations=stations,
        queues=queue_depths(session),
        needs_attention=attention_list(session),
        blocked=blocked_in_production(session),
        audit_checkpoints_checked=chain is not None and checkpoint_key is not None,
        audit_sealed_seq=sealed.sealed_seq,
        audit_verified_at=sealed.verified_at.isoformat() if sealed.verified_at else None,
        audit_problem=chain[2] if chain else None,
    )


def _head_seq(session: Session) -> int:
    """The number of events in the audit chain, by its head row (one row, cheap)."""
    return int(session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0)
