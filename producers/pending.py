"""The approval step (seed 002 §4.2): any lifecycle process can be made to wait for an
approver; an edit of a name, e-mail or UPN that a holder's live certificates carry
always waits for one (nothing is re-certified in a new name without a second person).

``perform`` is how the CLI and the API run each process in ``PROCESSES``. With the
process's ``[approvals]`` option off it runs at once, in one transaction. With it on,
the operation is first tried in a transaction that is rolled back (so a request that
could not succeed now is refused at once, naming what is wrong, and nothing is
written), then stored as a pending ``ApprovalRequest``. An approver's ``approve``
carries it out in the transaction that records the approval; if it has become
impossible meanwhile (the card was locked by someone else), the request is ``failed``
with the reason and nothing else changes. Whoever requested it can never approve or
reject it (``check_four_eyes``), only ``cancel`` it. Parameters are stored as JSON and
never hold a secret. One process is a grant rather than an operation: approving
``escrow.export`` changes nothing but lets its requester collect the escrowed key once
later (``producers.escrow``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import Store
from db.models import (
    ApprovalRequest,
    BatchOrder,
    Certificate,
    Credential,
    Incident,
    SoftToken,
    utcnow,
)
from db.transition import create, transition
from producers import cards, certificates, escrow, lifecycle, principals, tempcards, users
from producers.lookup import find_card, find_user
from schemas.errors import CardlineError, NotFound, Refused, StateConflict, ValidationFailed
from schemas.policy import ApprovalSteps, Policy
from schemas.states import (
    BatchState,
    CardState,
    CertState,
    IncidentState,
    RequestState,
    SoftTokenState,
)

Params = Mapping[str, Any]
_MAX_REASON = 400


@dataclass(frozen=True)
class Process:
    """One process an approval step can hold: the entity it acts on, how a reference to
    it is resolved to a stable key, and the operation (inside a transaction)."""

    entity: str
    resolve: Callable[[Session, str], str]
    run: Callable[[Session, str, Params, str, Policy], Any]
    summary: Callable[[str, Params], str]
    # Held whatever ``[approvals]`` says, when this says so (e.g. a new UPN for a
    # holder whose live certificates carry the old one).
    always_held: Callable[[Session, str, Params], bool] | None = None


def _user_key(s: Session, ref: str) -> str:
    return str(find_user(s, ref).id)


def _card_key(s: Session, ref: str) -> str:
    return str(find_card(s, ref).id)


def _cert_key(s: Session, ref: str) -> str:
    return certificates.find(s, ref).serial


def _principal_key(_s: Session, ref: str) -> str:
    return ref


def _new_user_key(_s: Session, ref: str) -> str:
    return ref.strip().lower()


# The attributes certificates carry (subject and subject alternative names).
IDENTITY_ATTRIBUTES = ("upn", "email", "first_name", "last_name")


def _renames_a_certified_holder(s: Session, ref: str, params: Params) -> bool:
    """Whether the edit changes an attribute that the user's live certificates carry."""
    user = find_user(s, ref)
    changes = params.get("changes") or {}
    renamed = [
        name
        for name in IDENTITY_ATTRIBUTES
        if name in changes
        and str(changes[name] or "").strip().casefold() != str(getattr(user, name) or "").casefold()
    ]
    if not renamed:
        return False
    live = s.scalar(
        select(Certificate.id)
        .join(Credential, Certificate.credential_id == Credential.id)
        .where(
            Credential.user_id == user.id,
            Certificate.state.in_([CertState.VALID, CertState.HOLD]),
        )
        .limit(1)
    )
    tokens = s.scalar(
        select(Certificate.id)
        .join(SoftToken, Certificate.soft_token_id == SoftToken.id)
        .where(
            SoftToken.user_id == user.id,
            Certificate.state.in_([CertState.VALID, CertState.HOLD]),
        )
        .limit(1)
    )
    return live is not None or tokens is not None


def _reason(params: Params) -> str | None:
    return params.get("reason")


def _with_reason(what: str) -> Callable[[str, Params], str]:
    def summary(target: str, params: Params) -> str:
        reason = _reason(params)
        return f"{what} {target}" + (f" ({reason})" if reason else "")

    return summary


PROCESSES: dict[str, Process] = {
    "user.create": Process(
        "user",
        _new_user_key,
        lambda s, _t, p, by, policy: users.create_user_in(
            s, dict(p["values"]), by=by, policy=policy
        ),
        lambda t, _p: f"create user {t}",
    ),
    "user.edit": Process(
        "user",
        _user_key,
        lambda s, t, p, by, policy: users.update_user_in(
            s, t, dict(p["changes"]), by=by, unique_email=policy.email_unique
        ),
        lambda t, p: f"edit user {t}: {', '.join(sorted(p['changes']))}",
        always_held=_renames_a_certified_holder,
    ),
    "user.deactivate": Process(
        "user",
        _user_key,
        lambda s, t, p, by, policy: lifecycle.deactivate_user_in(
            s, t, by=by, reason=_reason(p), reasons=policy.deactivation_reasons
        ),
        _with_reason("deactivate user"),
    ),
    "user.reactivate": Process(
        "user",
        _user_key,
        lambda s, t, p, by, policy: lifecycle.reactivate_user_in(
            s, t, by=by, reason=_reason(p), reasons=policy.deactivation_reasons
        ),
        _with_reason("reactivate user"),
    ),
    "user.lock": Process(
        "user",
        _user_key,
        lambda s, t, p, by, _policy: lifecycle.lock_user_in(s, t, by=by, reason=p["reason"]),
        _with_reason("lock user"),
    ),
    "user.delete": Process(
        "user",
        _user_key,
        lambda s, t, p, by, _policy: users.delete_user_in(s, t, by=by, reason=_reason(p)),
        _with_reason("delete user"),
    ),
    "principal.roles": Process(
        "principal",
        _principal_key,
        lambda s, t, p, by, _policy: principals.set_roles_in(s, int(t), p["roles"], by=by),
        lambda t, p: f"set the roles of principal {t} to {', '.join(p['roles']) or 'none'}",
    ),
    "card.deactivate": Process(
        "card",
        _card_key,
        lambda s, t, p, by, policy: lifecycle.deactivate_card_at(
            s, t, by=by, reason=_reason(p), reasons=policy.deactivation_reasons
        ),
        _with_reason("deactivate card"),
    ),
    "card.reactivate": Process(
        "card",
        _card_key,
        lambda s, t, p, by, policy: lifecycle.reactivate_card_at(
            s, t, by=by, reason=_reason(p), reasons=policy.deactivation_reasons
        ),
        _with_reason("reactivate card"),
    ),
    "card.lock": Process(
        "card",
        _card_key,
        lambda s, t, p, by, _policy: lifecycle.lock_card_at(s, t, by=by, reason=p["reason"]),
        _with_reason("lock card"),
    ),
    "card.renew": Process(
        "card",
        _card_key,
        lambda s, t, p, by, _policy: cards.renew_card_in(
            s,
            t,
            by=by,
            usages=p.get("usages") or (),
            keep_keys=bool(p.get("keep_keys")),
            recover=p.get("recover"),
        ),
        lambda t, _p: f"renew the certificates of card {t}",
    ),
    "tempcard.assign": Process(
        "card",
        _card_key,
        lambda s, t, p, by, policy: tempcards.assign_at(
            s, t, p["user"], by=by, policy=policy, days=p.get("days")
        ),
        lambda t, p: f"assign temporary card {t} to {p['user']}",
    ),
    "tempcard.extend": Process(
        "card",
        _card_key,
        lambda s, t, p, by, policy: tempcards.extend_in(
            s, t, by=by, policy=policy, days=p.get("days")
        ),
        lambda t, p: (
            f"extend temporary card {t}" + (f" by {p['days']} days" if p.get("days") else "")
        ),
    ),
    "tempcard.withdraw": Process(
        "card",
        _card_key,
        lambda s, t, p, by, _policy: tempcards.withdraw_in(s, t, by=by, reason=_reason(p)),
        _with_reason("withdraw temporary card"),
    ),
    "certificate.revoke": Process(
        "certificate",
        _cert_key,
        lambda s, t, p, by, _policy: certificates.revoke_in(s, t, reason=p["reason"], by=by),
        _with_reason("revoke certificate"),
    ),
    # Dual control of an escrowed key: approving grants its requester one export, which
    # they collect later (``producers.escrow.escrowed_key``); nothing is exported here.
    "escrow.export": Process(
        "card",
        _card_key,
        escrow.grant_export_in,
        lambda t, _p: f"export the escrowed key of card {t} as a PFX (once, by its requester)",
    ),
}


@dataclass(frozen=True)
class Outcome:
    """What ``perform`` did: the operation's result (``done``), or the pending request
    it became (``request_id``)."""

    done: bool
    result: Any = None
    request_id: int | None = None
    summary: str = ""


def perform(
    store: Store,
    process: str,
    target: str,
    params: Params,
    *,
    by: str,
    policy: Policy,
    steps: ApprovalSteps,
) -> Outcome:
    """Run ``process`` on ``target`` now, or hold it for an approver when its approval
    step is on. Either way nothing is written when it could not succeed."""
    chosen = PROCESSES[process]
    held = steps.required(process)
    if not held and chosen.always_held is not None:
        with store.read() as s:
            held = chosen.always_held(s, target, params)
    if not held:
        with store.tx() as s:
            return Outcome(done=True, result=chosen.run(s, target, params, by, policy))
    with store.trial() as s:
        key = chosen.resolve(s, target)
        chosen.run(s, key, params, by, policy)  # refused now: refused as a request too
    summary = chosen.summary(key, params)
    with store.tx() as s:
        row = hold_in(s, process, key, params, by=by, summary=summary)
        return Outcome(done=False, request_id=row.id, summary=row.summary)


def waiting_request(s: Session, process: str, key: str) -> int | None:
    """The id of the request for ``process`` on ``key`` that waits for an approver."""
    return s.scalar(
        select(ApprovalRequest.id).where(
            ApprovalRequest.process == process,
            ApprovalRequest.target == key,
            ApprovalRequest.state == RequestState.PENDING,
        )
    )


def hold_in(
    s: Session, process: str, key: str, params: Params, *, by: str, summary: str
) -> ApprovalRequest:
    """Store ``process`` on ``key`` (already resolved) as a pending request, inside the
    caller's transaction; StateConflict when one waits already."""
    _check_params(params)
    waiting = waiting_request(s, process, key)
    if waiting is not None:
        raise StateConflict(
            "approval_request",
            waiting,
            "request",
            RequestState.PENDING,
            (),
            f"{process} of {key} already waits for an approver as request {waiting}",
        )
    return create(
        s,
        ApprovalRequest(
            state=RequestState.PENDING,
            process=process,
            target=key,
            params=dict(params),
            summary=summary[:300],
            requested_by=by,
        ),
        actor=by,
        reason=summary[:300],
    )


def _check_params(params: Params) -> None:
    reason = params.get("reason")
    if reason is not None and len(str(reason)) > _MAX_REASON:
        raise ValidationFailed(f"a reason is at most {_MAX_REASON} characters", field="reason")


class _Impossible(Exception):
    def __init__(self, error: CardlineError) -> None:
        self.error = error


@dataclass(frozen=True)
class Decision:
    request_id: int
    state: str
    outcome: str
    result: Any = None


def approve(store: Store, request_id: int, *, by: str, policy: Policy) -> Decision:
    """Approve the request and carry it out, in one transaction; ``failed`` (and nothing
    else changed) when it is no longer possible. FourEyesViolation for its requester,
    StateConflict when it was decided already."""
    try:
        with store.tx() as s:
            row = _pending(s, request_id, by)
            process = PROCESSES[row.process]
            try:
                result = process.run(s, row.target, row.params, row.requested_by, policy)
            except CardlineError as exc:
                raise _Impossible(exc) from exc
            outcome = _describe(result)
            transition(
                s,
                row,
                "approve",
                actor=by,
                reason=f"carried out: {outcome}"[:_MAX_REASON],
                changes={"decided_by": by, "decided_at": utcnow(), "outcome": outcome},
            )
            return Decision(request_id, RequestState.APPROVED, outcome, result)
    except _Impossible as impossible:
        why = str(impossible.error)[:_MAX_REASON]
        with store.tx() as s:
            row = _pending(s, request_id, by)
            transition(
                s,
                row,
                "fail",
                actor=by,
                reason=why,
                changes={"decided_by": by, "decided_at": utcnow(), "outcome": why},
            )
        return Decision(request_id, RequestState.FAILED, why)


def reject(store: Store, request_id: int, *, by: str, reason: str) -> Decision:
    """Reject the request with a reason; nothing of it is carried out."""
    why = reason.strip()
    if not why or len(why) > _MAX_REASON:
        raise ValidationFailed(
            f"a reason of 1 to {_MAX_REASON} characters is required", field="reason"
        )
    with store.tx() as s:
        row = _pending(s, request_id, by)
        transition(
            s,
            row,
            "reject",
            actor=by,
            reason=why,
            changes={"decided_by": by, "decided_at": utcnow(), "outcome": why},
        )
    return Decision(request_id, RequestState.REJECTED, why)


def cancel(store: Store, request_id: int, *, by: str) -> Decision:
    """The requester withdraws their own pending request."""
    with store.tx() as s:
        row = _row(s, request_id)
        if not principals.same_principal(by, row.requested_by):
            raise Refused(f"request {request_id} is {row.requested_by}'s; only they may cancel it")
        transition(s, row, "cancel", actor=by, changes={"decided_by": by, "decided_at": utcnow()})
    return Decision(request_id, RequestState.CANCELLED, "cancelled by its requester")


def _row(s: Session, request_id: int) -> ApprovalRequest:
    row = s.get(ApprovalRequest, request_id, with_for_update=True)
    if row is None:
        raise NotFound("approval request", request_id)
    return row


def _pending(s: Session, request_id: int, decider: str) -> ApprovalRequest:
    row = _row(s, request_id)
    principals.check_four_eyes(decider, row.requested_by, f"request {request_id}")
    if row.state != RequestState.PENDING:
        raise StateConflict(
            "approval_request", request_id, "decide", row.state, (RequestState.PENDING,)
        )
    return row


def _describe(result: Any) -> str:
    if isinstance(result, int) and not isinstance(result, bool):
        return f"{result} certificate(s) changed"
    if isinstance(result, list):
        return f"changed: {', '.join(map(str, result)) or 'nothing'}"
    return f"now {result}" if isinstance(result, str) else "done"


# --- what waits for whom ---------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """One thing waiting for a decision: what it is, who asked, and how to decide it."""

    kind: str
    id: int
    what: str
    requested_by: str
    requested_at: str
    use_case: str  # the use case whose roles may decide it (never the requester)
    decide: str  # the command that decides it


def waiting(store: Store, *, limit: int = 500) -> list[Waiting]:
    """Everything that waits for an approver, oldest first: approval requests, batches,
    card requests, soft token requests and replacement requests."""
    found: list[Waiting] = []
    with store.read() as s:
        for row in _oldest(s, ApprovalRequest, RequestState.PENDING, limit):
            found.append(
                Waiting(
                    "request",
                    row.id,
                    row.summary,
                    row.requested_by,
                    row.created_at.isoformat(),
                    "request.decide",
                    f"cardline approvals approve {row.id}",
                )
            )
        for batch in _oldest(s, BatchOrder, BatchState.REQUESTED, limit):
            found.append(
                Waiting(
                    "batch",
                    batch.id,
                    f"batch {batch.name} ({batch.card_count} cards)",
                    batch.requested_by,
                    batch.created_at.isoformat(),
                    "batch.decide",
                    f"cardline batch approve {batch.id}",
                )
            )
        replacements = (
            select(Incident.replacement_id)
            .where(Incident.state == IncidentState.OPEN, Incident.replacement_id.is_not(None))
            .scalar_subquery()
        )
        stmt = (
            select(Credential)
            .where(
                Credential.state == CardState.REQUESTED,
                Credential.batch_id.is_(None),
                Credential.id.not_in(replacements),
            )
            .order_by(Credential.id)
            .limit(limit)
        )
        for card in s.scalars(stmt):
            found.append(
                Waiting(
                    "card",
                    card.id,
                    f"card for {card.user.email if card.user else 'stock'}",
                    card.requested_by,
                    card.created_at.isoformat(),
                    "card.decide",
                    f"cardline card decide {card.id} approve",
                )
            )
        for token in _oldest(s, SoftToken, SoftTokenState.REQUESTED, limit):
            found.append(
                Waiting(
                    "soft_token",
                    token.id,
                    f"soft token {token.token_type} for {token.user.email}",
                    token.requested_by,
                    token.created_at.isoformat(),
                    "softtoken.decide",
                    f"cardline softtoken approve {token.id}",
                )
            )
        for incident in _oldest(s, Incident, IncidentState.OPEN, limit):
            found.append(
                Waiting(
                    "incident",
                    incident.id,
                    f"replacement for card {incident.credential_id} ({incident.kind})",
                    incident.declared_by,
                    incident.created_at.isoformat(),
                    "incident.decide",
                    f"cardline incident approve {incident.id}",
                )
            )
    return sorted(found, key=lambda w: w.requested_at)


def _oldest(s: Session, model: Any, state: str, limit: int) -> Sequence[Any]:
    stmt = select(model).where(model.state == state).order_by(model.id).limit(limit)
    return s.scalars(stmt).all()


def requests(store: Store, *, state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Approval requests, newest first, as plain dicts (for ``--json`` and the API)."""
    with store.read() as s:
        stmt = select(ApprovalRequest).order_by(ApprovalRequest.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(ApprovalRequest.state == state)
        return [
            {
                "id": r.id,
                "process": r.process,
                "target": r.target,
                "summary": r.summary,
                "state": r.state,
                "requested_by": r.requested_by,
                "requested_at": r.created_at.isoformat(),
                "decided_by": r.decided_by,
                "decided_at": r.decided_at.isoformat() if r.decided_at else None,
                "outcome": r.outcome,
            }
            for r in s.scalars(stmt)
        ]
