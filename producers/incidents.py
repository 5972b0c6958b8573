"""Device incidents (seed 003): a card forgotten, lost, stolen or damaged.

Declaring one puts the card out of use at once and opens a replacement request:

=========  ====================================  ==========================
kind       the card                              replacement (default)
=========  ====================================  ==========================
forgotten  deactivated (certificates on hold)    temporary card
lost       deactivated (certificates on hold)    permanent card
stolen     locked (revoked: key compromise)      permanent card
damaged    locked (revoked: cessation)           permanent card
=========  ====================================  ==========================

Declaring a kind that locks the card (stolen, damaged) is locking it, irreversibly:
it needs the role that may lock a card (``card.lock``) as well as ``card.incident``.
Where locking a card waits for an approver (``[approvals] card_lock``), so does the lock
an incident asks for: the card is deactivated at once (its certificates on hold, which
can be undone) and the lock waits as a held ``card.lock`` request that an approver (never
the declarer) carries out; cancelling the incident withdraws that request too.

A permanent replacement is a card request; a temporary one is the assignment of a
temporary card from stock. Either waits for an approver (four-eyes against whoever
declared the incident) unless the policy says otherwise; approving closes the incident.
Cancelling (the card was found) withdraws the replacement request and undoes what the
incident itself did: a card it deactivated is back in use with the certificates it put
on hold, while a card that was already out of use, or a certificate held by anyone
else, stays as it was. Each step is one transaction.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import ApprovalRequest, Credential, Incident, utcnow
from db.transition import create, transition
from producers import lifecycle, pending
from producers.cards import new_cards_in
from producers.lookup import find_card
from producers.principals import Caller, audit_refusal, check_four_eyes
from producers.tempcards import assign_in, first_in_stock
from schemas.api import IncidentOut
from schemas.errors import (
    AlreadyExists,
    Forbidden,
    NotFound,
    PermanentError,
    StateConflict,
    ValidationFailed,
)
from schemas.messages import PrepareCard
from schemas.permissions import roles_for
from schemas.policy import ApprovalSteps, Policy
from schemas.states import (
    CardState,
    CredentialKind,
    IncidentKind,
    IncidentState,
    RequestState,
    RevocationReason,
)

_LOCKING = {
    IncidentKind.STOLEN: RevocationReason.KEY_COMPROMISE,
    IncidentKind.DAMAGED: RevocationReason.CESSATION_OF_OPERATION,
}
_OUT_OF_USE_STATES = (CardState.ACTIVE, CardState.INACTIVE, CardState.ISSUED)
LOCK_USE_CASE = "card.lock"


def locks(kind: str) -> bool:
    """Whether declaring an incident of ``kind`` locks the card (for good)."""
    return kind in {k.value for k in _LOCKING}


def check_may_declare(store: Store, who: Caller, kind: str) -> None:
    """Forbidden (audited as refused) when an incident of ``kind`` would lock the card
    and ``who`` may not lock cards: an incident is no way round ``card.lock``."""
    if locks(kind) and not who.may(LOCK_USE_CASE):
        allowed = tuple(sorted(r.value for r in roles_for(LOCK_USE_CASE)))
        error = Forbidden(
            who.name, f"declare a card {kind}: that locks it ({LOCK_USE_CASE})", allowed
        )
        audit_refusal(store, who, f"incident {kind}", str(error))
        raise error


def _mark(incident: Incident) -> str:
    """How the audit events of what ``incident`` put out of use begin: cancelling it
    restores exactly those."""
    return f"device incident {incident.id}:"


def _view(session: Session, incident: Incident) -> IncidentOut:
    lock = _lock_request(session, incident) if locks(incident.kind) else None
    return IncidentOut(
        id=incident.id,
        card_id=incident.credential_id,
        kind=incident.kind,
        temporary=incident.temporary,
        state=incident.state,
        replacement_id=incident.replacement_id,
        declared_by=incident.declared_by,
        lock_request_id=None if lock is None else lock.id,
    )


def _lock_request(session: Session, incident: Incident) -> ApprovalRequest | None:
    """The held ``card.lock`` request that declaring ``incident`` made, if any."""
    stmt = (
        select(ApprovalRequest)
        .where(
            ApprovalRequest.process == LOCK_USE_CASE,
            ApprovalRequest.target == str(incident.credential_id),
        )
        .order_by(ApprovalRequest.id)
    )
    return next((r for r in session.scalars(stmt) if r.params.get("incident") == incident.id), None)


def _incident(session: Session, incident_id: int) -> Incident:
    row = session.get(Incident, incident_id, with_for_update=True)
    if row is None:
        raise NotFound("incident", incident_id)
    return row


def _put_out_of_use(
    session: Session, card: Credential, incident: Incident, by: str, steps: ApprovalSteps
) -> None:
    kind = IncidentKind(incident.kind)
    why = f"{_mark(incident)} {kind.value}"
    held = kind in _LOCKING and steps.required(LOCK_USE_CASE)
    if kind in _LOCKING and not held:
        lifecycle.lock_card_in(session, card, by=by, reason=_LOCKING[kind])
        return
    if card.state == CardState.ACTIVE:
        lifecycle.deactivate_card_in(session, card, by=by, reason=why)
    if held and pending.waiting_request(session, LOCK_USE_CASE, str(card.id)) is None:
        # A lock of this card that waits already (asked for directly) is not asked twice.
        reason = _LOCKING[kind].value
        pending.hold_in(
            session,
            LOCK_USE_CASE,
            str(card.id),
            {"reason": reason, "incident": incident.id},
            by=by,
            summary=f"lock card {card.id} ({reason}; device incident {incident.id}: {kind})",
        )


def declare(
    store: Store,
    card: str,
    kind: str,
    *,
    by: str,
    policy: Policy,
    steps: ApprovalSteps,
    temporary: bool | None = None,
    note: str | None = None,
) -> IncidentOut:
    """Declare card ``card`` ``kind``: it goes out of use (its lock held for an approver
    when ``steps`` hold card locks) and its replacement is requested."""
    try:
        chosen = IncidentKind(kind)
    except ValueError:
        raise ValidationFailed(
            f"one of {', '.join(k.value for k in IncidentKind)}", field="kind"
        ) from None
    if note is not None and len(note) > 400:
        raise ValidationFailed("at most 400 characters", field="note")
    temp = chosen is IncidentKind.FORGOTTEN if temporary is None else temporary
    with store.tx() as s:
        cred = find_card(s, card, lock=True)
        # A temporary card has no incidents (its machine has no step for one), and a
        # permanent card only while in use: both refused as an illegal action is.
        allowed = _OUT_OF_USE_STATES if cred.kind == CredentialKind.CARD else ()
        if cred.state not in allowed:
            raise StateConflict(
                cred.machine.name,
                cred.id,
                "declare_incident",
                cred.state,
                allowed,
                detail="only a holder's permanent card in use has incidents",
            )
        if cred.user is None:
            raise PermanentError(f"card {card} is not a holder's permanent card")
        open_one = s.scalars(
            select(Incident.id).where(
                Incident.credential_id == cred.id, Incident.state == IncidentState.OPEN
            )
        ).first()
        if open_one is not None:
            raise AlreadyExists(f"incident {open_one} for card {card} is still open")
        user = cred.user
        incident = create(
            s,
            Incident(
                state=IncidentState.OPEN,
                credential_id=cred.id,
                kind=chosen.value,
                temporary=temp,
                declared_by=by,
                note=note,
            ),
            actor=by,
            reason=f"card {cred.id} {chosen.value}; {'temporary' if temp else 'permanent'} "
            "replacement requested",
        )
        _put_out_of_use(s, cred, incident, by, steps)
        if not temp:
            (replacement,) = new_cards_in(
                s,
                [str(user.id)],
                by=by,
                policy=policy,
                line=cred.line,
                approved=False,
                why=f"replacement for card {cred.id} ({chosen.value})",
            )
            incident.replacement_id = replacement
        if not policy.replacement_approval_required:
            _approve_in(s, incident, by="policy:no-approval", policy=policy)
        s.flush()
        return _view(s, incident)


def _approve_in(session: Session, incident: Incident, *, by: str, policy: Policy) -> None:
    if incident.temporary:
        card = session.get(Credential, incident.credential_id)
        assert card is not None
        assert card.user is not None
        stock = first_in_stock(session)
        if stock is None:
            raise PermanentError("no temporary card in stock: run a stock run first")
        assign_in(
            session,
            stock,
            card.user,
            by=by,
            policy=policy,
            why=f"replacement for card {card.id} ({incident.kind})",
        )
        incident.replacement_id = stock.id
    else:
        replacement = session.get(Credential, incident.replacement_id, with_for_update=True)
        assert replacement is not None
        transition(
            session,
            replacement,
            "approve",
            actor=by,
            reason=f"replacement (incident {incident.id})",
            messages=[PrepareCard(credential_id=replacement.id)],
        )
    transition(session, incident, "close", actor=by, reason="replacement approved")


def approve(store: Store, incident_id: int, *, by: str, policy: Policy) -> IncidentOut:
    """Approve the replacement: a temporary card from stock is assigned to the holder,
    or the replacement card goes to production."""
    with store.tx() as s:
        incident = _incident(s, incident_id)
        check_four_eyes(by, incident.declared_by, f"the replacement of incident {incident_id}")
        if incident.state != IncidentState.OPEN:
            transition(s, incident, "close", actor=by)  # raises StateConflict, names the state
        _approve_in(s, incident, by=by, policy=policy)
        return _view(s, incident)


def cancel(store: Store, incident_id: int, *, by: str, reason: str | None = None) -> IncidentOut:
    """The card was found: withdraw the replacement request and the lock the incident
    asked for, if it still waits, and put back in use what the incident put out of use
    (nothing else: a card deactivated before it stays so, a locked card stays locked)."""
    with store.tx() as s:
        incident = _incident(s, incident_id)
        transition(s, incident, "cancel", actor=by, reason=reason or "card found")
        if incident.replacement_id is not None:
            replacement = s.get(Credential, incident.replacement_id, with_for_update=True)
            assert replacement is not None
            transition(
                s, replacement, "cancel", actor=by, reason=f"incident {incident.id} cancelled"
            )
        lock = _lock_request(s, incident)
        if lock is not None and lock.state == RequestState.PENDING:
            transition(
                s,
                lock,
                "cancel",
                actor=by,
                reason=f"incident {incident.id} cancelled",
                changes={"decided_by": by, "decided_at": utcnow()},
            )
        card = s.get(Credential, incident.credential_id, with_for_update=True)
        assert card is not None
        lifecycle.undo_deactivation_in(s, card, mark=_mark(incident), by=by, reason="card found")
        return _view(s, incident)


def list_incidents(store: Store, *, state: str | None = None) -> list[IncidentOut]:
    with store.read() as s:
        stmt = select(Incident).order_by(Incident.id)
        if state is not None:
            stmt = stmt.where(Incident.state == state)
        return [_view(s, i) for i in s.scalars(stmt)]
