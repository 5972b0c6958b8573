"""Card requests one at a time or several (a batch order), decisions on single cards,
operator issuance, activation, and finding cards.

A request makes a ``requested`` card (``approved`` straight away when the policy needs
no approval), never more live cards for a user than ``cards_per_user``. Decisions on a
card follow the four-eyes rule like batch decisions: whoever requested a card neither
approves nor rejects it. An operator may *issue* cards, which skips the approval the
policy asks of requests (the Blueprints' "Issue card").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db import outbox, updates
from db.engine import Store
from db.models import (
    AuditEvent,
    BatchOrder,
    BureauLine,
    CardUpdate,
    Certificate,
    Credential,
    ProductionAttempt,
    User,
)
from db.transition import create, record, transition
from producers.lookup import find_card, find_user
from producers.principals import check_four_eyes
from producers.users import MAX_PAGE, Page, apply_requested_changes
from schemas.api import (
    CardAttemptOut,
    CardCertificateOut,
    CardEventOut,
    CardOut,
    CardUpdateOut,
)
from schemas.batch import LINE_NAME
from schemas.errors import ApprovalRequired, PermanentError, StateConflict, ValidationFailed
from schemas.messages import PrepareCard
from schemas.policy import Policy
from schemas.states import (
    LIVE_CARD_STATES,
    BatchState,
    CardState,
    CredentialKind,
    TempCardState,
    UserState,
)

_MAX_REASON = 400


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


def views(session: Session, creds: Sequence[Credential]) -> list[CardOut]:
    """The cards as the API shows them, with their certificates (whether each is on the
    chip) and their updates: one query for each, for all the cards."""
    ids = [c.id for c in creds]
    certs: dict[int, list[CardCertificateOut]] = {i: [] for i in ids}
    changes: dict[int, list[CardUpdateOut]] = {i: [] for i in ids}
    if ids:
        for cert in session.scalars(
            select(Certificate).where(Certificate.credential_id.in_(ids)).order_by(Certificate.id)
        ):
            if cert.credential_id is not None:  # the query asks only for these cards'
                certs[cert.credential_id].append(
                    CardCertificateOut(
                        serial=cert.serial,
                        usage=cert.usage,
                        state=cert.state,
                        on_chip=cert.on_chip,
                        not_after=_iso(cert.not_after) or "",
                        revocation_reason=cert.revocation_reason,
                    )
                )
        for row in session.scalars(
            select(CardUpdate).where(CardUpdate.credential_id.in_(ids)).order_by(CardUpdate.id)
        ):
            changes[row.credential_id].append(
                CardUpdateOut(
                    id=row.id,
                    kind=row.kind,
                    state=row.state,
                    requested_by=row.requested_by,
                    requested_at=_iso(row.created_at) or "",
                    applied_at=_iso(row.applied_at),
                    steps_done=[
                        *(k for k in ("keys", "written", "erased") if row.journal.get(k)),
                        *(f"imported {s}" for s in row.journal.get("imported", [])),
                    ],
                    error=row.error,
                )
            )
    return [
        CardOut(
            id=cred.id,
            kind=cred.kind,
            state=cred.state,
            card_number=cred.card_number,
            user_id=cred.user_id,
            user_email=cred.user.email if cred.user else None,
            batch_id=cred.batch_id,
            line=cred.line,
            requested_by=cred.requested_by,
            attempts=cred.attempt_count,
            valid_from=_iso(cred.valid_from),
            valid_until=_iso(cred.valid_until),
            certificates={c.serial: c.state for c in certs[cred.id]},
            certificate_list=certs[cred.id],
            updates=changes[cred.id],
        )
        for cred in creds
    ]


def _reason(reason: str | None, *, required: bool) -> str | None:
    text = (reason or "").strip()
    if required and not text:
        raise ValidationFailed("a reason is required", field="reason")
    if len(text) > _MAX_REASON:
        raise ValidationFailed(f"at most {_MAX_REASON} characters", field="reason")
    return text or None


def _line(line: str | None, policy: Policy) -> str:
    chosen = line or policy.default_line
    if not LINE_NAME.match(chosen):
        raise ValidationFailed("lower-case letters, digits, '-' or '_'", field="line")
    return chosen


def _live_cards(session: Session, user: User) -> int:
    stmt = select(func.count()).where(
        Credential.user_id == user.id,
        Credential.kind == CredentialKind.CARD,
        Credential.state.in_(sorted(LIVE_CARD_STATES)),
    )
    return int(session.scalar(stmt) or 0)


def new_cards_in(
    session: Session,
    users: Sequence[str],
    *,
    by: str,
    policy: Policy,
    line: str,
    approved: bool,
    why: str,
) -> list[int]:
    if not users:
        raise ValidationFailed("name at least one user", field="users")
    holders = [find_user(session, who, lock=True) for who in users]
    if len({u.id for u in holders}) != len(holders):
        raise ValidationFailed("a user is named twice", field="users")
    batch = None
    if len(holders) > 1:
        batch = create(
            session,
            BatchOrder(
                name=f"request by {by}",
                requested_by=by,
                approved_by=by if approved else None,
                state=BatchState.APPROVED if approved else BatchState.REQUESTED,
                card_count=len(holders),
            ),
            actor=by,
            reason=why,
        )
    ids = []
    for user in holders:
        if user.state != UserState.ACTIVE:
            raise PermanentError(f"user {user.email} is {user.state}; no card can be requested")
        live = _live_cards(session, user)
        if live >= policy.cards_per_user:
            raise PermanentError(
                f"user {user.email} already has {live} live card(s); "
                f"the policy allows {policy.cards_per_user}"
            )
        card = Credential(
            kind=CredentialKind.CARD,
            user_id=user.id,
            batch_id=batch.id if batch else None,
            line=line,
            requested_by=by,
            state=CardState.APPROVED if approved else CardState.REQUESTED,
        )
        create(session, card, actor=by, reason=why)
        if approved:
            outbox.add(session, PrepareCard(credential_id=card.id))
        ids.append(card.id)
    return ids


def request_cards(
    store: Store, users: Sequence[str], *, by: str, policy: Policy, line: str | None = None
) -> list[int]:
    """One card for each of ``users`` (e-mail or id); several make one batch order.
    All or nothing: one refused user refuses the request."""
    with store.tx() as s:
        return new_cards_in(
            s,
            users,
            by=by,
            policy=policy,
            line=_line(line, policy),
            approved=not policy.approval_required,
            why="card requested",
        )


def issue_cards(
    store: Store, users: Sequence[str], *, by: str, policy: Policy, line: str | None = None
) -> list[int]:
    """An operator's issuance (local issuance): approved at once and queued for
    production. ApprovalRequired under validated issuance."""
    if policy.approval_required:
        raise ApprovalRequired()
    with store.tx() as s:
        return new_cards_in(
            s,
            users,
            by=by,
            policy=policy,
            line=_line(line, policy),
            approved=True,
            why="card issued by operator",
        )


def _decidable(session: Session, card: str, by: str, action: str) -> Credential:
    cred = _not_importing(find_card(session, card, lock=True), action)
    check_four_eyes(by, cred.requested_by, f"card {cred.id}")
    return cred


def _not_importing(cred: Credential, action: str) -> Credential:
    """Refuse to decide on a card of a batch still being imported: the batch is decided
    as a whole once the file is in."""
    if cred.batch is not None and cred.batch.state == BatchState.IMPORTING:
        raise StateConflict(
            cred.machine.name,
            cred.id,
            action,
            cred.state,
            (),
            detail=f"its batch {cred.batch_id} is still being imported",
        )
    return cred


def approve_card(
    store: Store, card: str, *, by: str, comment: str | None = None, unique_email: bool = True
) -> str:
    with store.tx() as s:
        cred = _decidable(s, card, by, "approve")
        if cred.machine.target(cred.state, "approve") is not None:  # else: StateConflict below
            apply_requested_changes(s, cred, by=cred.requested_by, unique_email=unique_email)
        return transition(
            s,
            cred,
            "approve",
            actor=by,
            reason=_reason(comment, required=False),
            changes={"user_changes": None},
            messages=[PrepareCard(credential_id=cred.id)],
        )


def reject_card(
    store: Store, card: str, *, by: str, reason: str, comment: str | None = None
) -> str:
    why = _reason(reason, required=True)
    note = _reason(comment, required=False)
    with store.tx() as s:
        cred = _decidable(s, card, by, "reject")
        return transition(s, cred, "reject", actor=by, reason=f"{why}: {note}" if note else why)


def postpone_card(store: Store, card: str, *, by: str, reason: str) -> str:
    """Leave the request waiting, with the reason on record (audited)."""
    why = _reason(reason, required=True)
    with store.tx() as s:
        cred = _decidable(s, card, by, "postpone")
        return transition(s, cred, "postpone", actor=by, reason=why)


def cancel_card(store: Store, card: str, *, by: str, reason: str | None = None) -> str:
    """Withdraw a request before a station starts on it."""
    with store.tx() as s:
        cred = _not_importing(find_card(s, card, lock=True), "cancel")
        return transition(s, cred, "cancel", actor=by, reason=_reason(reason, required=False))


def activate_card(store: Store, card: str, *, by: str) -> str:
    """``issued -> active``: the separate activation step, when the policy has one. A
    card a service bureau delivered is refused: its chip carries nothing of Cardline's
    until a desk personalises it, and the store must not say otherwise."""
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        from_bureau = s.scalar(
            select(BureauLine.id).where(
                BureauLine.credential_id == cred.id, BureauLine.state == "produced"
            )
        )
        if from_bureau is not None and not updates.on_chip(s, cred.id):
            raise StateConflict(
                cred.machine.name,
                cred.id,
                "activate",
                cred.state,
                (),
                detail="a bureau's card is activated at an update desk, which writes its "
                "chip (not built yet)",
            )
        return transition(s, cred, "activate", actor=by, reason="card activated")


def get_card(store: Store, card: str) -> CardOut:
    """One card with its timeline: every audit event of it (the newest 500) and every
    production attempt, beside its certificates and updates."""
    with store.read() as s:
        cred = find_card(s, card)
        shown = views(s, [cred])[0]
        events = s.scalars(
            select(AuditEvent)
            .where(AuditEvent.entity == cred.machine.name, AuditEvent.entity_id == str(cred.id))
            .order_by(AuditEvent.seq.desc())
            .limit(500)
        ).all()
        attempts = s.scalars(
            select(ProductionAttempt)
            .where(ProductionAttempt.credential_id == cred.id)
            .order_by(ProductionAttempt.number)
        ).all()
        shown.events = [
            CardEventOut(
                seq=e.seq,
                at=e.at.isoformat(timespec="seconds"),
                actor=e.actor,
                action=e.action,
                from_state=e.from_state,
                to_state=e.to_state,
                reason=e.reason,
            )
            for e in reversed(events)
        ]
        shown.attempt_list = [
            CardAttemptOut(
                number=a.number,
                state=a.state,
                station_id=a.station_id,
                chip_serial=a.chip_serial,
                fault=a.fault,
                detail=a.fault_detail,
                started_at=a.created_at.isoformat(timespec="seconds"),
                finished_at=a.finished_at.isoformat(timespec="seconds") if a.finished_at else None,
            )
            for a in attempts
        ]
        return shown


def search_cards(
    store: Store,
    *,
    state: str | None = None,
    kind: str | None = None,
    user: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> Page[CardOut]:
    if page < 1:
        raise ValidationFailed("pages start at 1", field="page")
    if not 1 <= per_page <= MAX_PAGE:
        raise ValidationFailed(f"between 1 and {MAX_PAGE}", field="per_page")
    states = {s.value for s in CardState} | {s.value for s in TempCardState}
    if state is not None and state not in states:
        raise ValidationFailed(f"not a card state: {state}", field="state")
    if kind is not None and kind not in {k.value for k in CredentialKind}:
        raise ValidationFailed(f"not a card kind: {kind}", field="kind")
    stmt = select(Credential)
    if state is not None:
        stmt = stmt.where(Credential.state == state)
    if kind is not None:
        stmt = stmt.where(Credential.kind == kind)
    with store.read() as s:
        if user is not None:
            stmt = stmt.where(Credential.user_id == find_user(s, user).id)
        total = int(s.scalar(select(func.count()).select_from(stmt.subquery())) or 0)
        rows = s.scalars(stmt.order_by(Credential.id).offset((page - 1) * per_page).limit(per_page))
        items = views(s, list(rows))
    return Page(items=items, total=total, page=page, per_page=per_page)


def renew_card(
    store: Store,
    card: str,
    *,
    by: str,
    usages: Sequence[str] = (),
    keep_keys: bool = False,
    recover: Sequence[str] | None = None,
) -> str:
    """Renew the card: a pending update (``db.updates``) that, at the next insertion of
    the card at an update desk, generates new keys on the chip, writes their new
    certificates, erases the old keys and only then revokes the old certificates. The
    PIN and PUK stay. The card stays ``active`` (its old certificates valid) meanwhile.

    The options of seed 002 §5.3.5: ``usages`` chooses the certificates delivered
    (default: every one whose key the chip made), ``keep_keys`` re-certifies the chip's
    keys instead of making new ones, ``recover`` writes the holder's earlier escrowed
    encryption keys in the same visit (serials; empty: all)."""
    with store.tx() as s:
        return renew_card_in(s, card, by=by, usages=usages, keep_keys=keep_keys, recover=recover)


def renew_card_in(
    session: Session,
    card: str,
    *,
    by: str,
    usages: Sequence[str] = (),
    keep_keys: bool = False,
    recover: Sequence[str] | None = None,
) -> str:
    """``renew_card`` inside the caller's transaction."""
    cred = find_card(session, card, lock=True)
    state = transition(session, cred, "renew", actor=by, reason="renewal requested")
    updates.request_renewal(
        session, cred, by=by, usages=usages, keep_keys=keep_keys, recover=recover
    )
    return state


def edit_card(store: Store, card: str, *, by: str, line: str, policy: Policy) -> list[str]:
    """Change what may still change on a card not yet at a station: its production line.
    Returns the names of the attributes that changed."""
    chosen = _line(line, policy)
    editable = (CardState.REQUESTED, CardState.APPROVED)
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        if cred.line == chosen and cred.state in editable:
            return []
        # Even an edit to the line the card already has is refused once it left the
        # editable states: the caller learns the card is beyond editing.
        record(
            s,
            cred,
            "update",
            actor=by,
            reason=f"line {cred.line} -> {chosen}",
            expect=editable,
            changes={"line": chosen},
        )
        return ["line"]
