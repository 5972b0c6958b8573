"""Software tokens (seed 004; the Blueprints' "Issue P12 certificate"): request,
approve or reject (four-eyes), cancel, revoke, and display the passphrase.

A request names a user and one or more token types (``[pki.softtokens]``); each type
becomes one soft token. Without required approval it is approved at once. An approved
token goes to the ``pki`` worker (``IssueSoftToken``) in the same transaction; the worker
issues it and ``notify`` delivers it. Revoking revokes its certificate and republishes
the CRL. Displaying the passphrase needs the operator or admin role and is audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import outbox
from db.engine import Store
from db.models import Certificate, SoftToken, utcnow
from db.secrets import Secret, SecretBox, context
from db.transition import create, transition
from producers.lookup import find_user
from producers.principals import check_four_eyes
from schemas.errors import Forbidden, NotFound, PermanentError, ValidationFailed
from schemas.messages import IssueSoftToken, PublishCrl
from schemas.permissions import may, roles_for
from schemas.pki import PkiConfig
from schemas.roles import Role
from schemas.states import OPERATOR_REASONS, CertState, RevocationReason, SoftTokenState, UserState

USE_CASE = "softtoken.password"  # who may display a passphrase: schemas.permissions


@dataclass(frozen=True)
class SoftTokenView:
    id: int
    user_email: str
    token_type: str
    state: str
    requested_by: str
    approved_by: str | None
    serial: str | None
    p12_path: str | None


def _token(session: Session, token_id: int) -> SoftToken:
    token = session.get(SoftToken, token_id)
    if token is None:
        raise NotFound("soft token", token_id)
    return token


def request_softtokens(
    store: Store, user: str, token_types: Sequence[str], *, by: str, pki: PkiConfig
) -> list[int]:
    """One soft token per selected type for ``user`` (email or id); returns their ids."""
    if not token_types:
        raise ValidationFailed("select at least one soft token type", field="token_types")
    for name in token_types:
        try:
            pki.softtoken_type(name)
        except ValueError as exc:
            raise ValidationFailed(str(exc), field="token_types") from None
    if len(set(token_types)) != len(token_types):
        raise ValidationFailed("a soft token type is selected twice", field="token_types")
    with store.tx() as s:
        holder = find_user(s, user)
        if holder.state != UserState.ACTIVE:
            raise PermanentError(f"user {holder.email} is {holder.state}, not active")
        ids = []
        for name in token_types:
            approved = not pki.softtoken_approval
            token = SoftToken(
                user_id=holder.id,
                token_type=name,
                requested_by=by,
                approved_by="policy:no-approval" if approved else None,
                state=SoftTokenState.APPROVED if approved else SoftTokenState.REQUESTED,
            )
            create(s, token, actor=by, reason=f"soft token {name} requested")
            if approved:  # the message needs the new row's id, known after create()
                outbox.add_all(s, [IssueSoftToken(soft_token_id=token.id)])
            ids.append(token.id)
        return ids


def approve(store: Store, token_id: int, *, by: str) -> str:
    with store.tx() as s:
        token = _token(s, token_id)
        check_four_eyes(by, token.requested_by, f"soft token {token_id}")
        return transition(
            s,
            token,
            "approve",
            actor=by,
            changes={"approved_by": by},
            messages=[IssueSoftToken(soft_token_id=token_id)],
        )


def reject(store: Store, token_id: int, *, by: str, reason: str) -> str:
    if not reason.strip():
        raise ValidationFailed("a rejection needs a reason", field="reason")
    with store.tx() as s:
        token = _token(s, token_id)
        check_four_eyes(by, token.requested_by, f"soft token {token_id}")
        return transition(s, token, "reject", actor=by, reason=reason)


def cancel(store: Store, token_id: int, *, by: str, reason: str | None = None) -> str:
    with store.tx() as s:
        return transition(s, _token(s, token_id), "cancel", actor=by, reason=reason)


def revoke(store: Store, token_id: int, *, by: str, reason: RevocationReason) -> str:
    """Revoke the soft token and its certificate; the CRL follows."""
    if reason not in OPERATOR_REASONS:
        raise ValidationFailed(f"choose one of {', '.join(OPERATOR_REASONS)}", field="reason")
    with store.tx() as s:
        token = _token(s, token_id)
        state = transition(s, token, "revoke", actor=by, reason=reason)
        cert = s.scalars(select(Certificate).where(Certificate.soft_token_id == token_id)).one()
        if cert.state in (CertState.VALID, CertState.HOLD):
            transition(
                s,
                cert,
                "revoke",
                actor=by,
                reason=reason,
                changes={"revoked_at": utcnow(), "revocation_reason": reason},
                messages=[PublishCrl(reason=f"revoked soft token {token_id}")],
            )
        return state


def reveal_passphrase(
    store: Store, box: SecretBox, token_id: int, *, by: str, roles: frozenset[str]
) -> Secret:
    """The stored passphrase of an issued soft token ("display password"), audited."""
    if not may(frozenset(Role(r) for r in roles if r in set(Role)), USE_CASE):
        allowed = tuple(sorted(r.value for r in roles_for(USE_CASE)))
        raise Forbidden(by, "display a soft token passphrase", allowed)
    with store.tx() as s:
        token = _token(s, token_id)
        transition(s, token, "reveal_passphrase", actor=by, reason="passphrase displayed")
        sealed = token.passphrase_sealed
    if sealed is None:  # pragma: no cover - an issued token always has one
        raise PermanentError(f"soft token {token_id} has no passphrase")
    return box.open(sealed, context=context("soft_token", token_id, "passphrase"))


def list_softtokens(
    store: Store, *, user: str | None = None, state: str | None = None
) -> list[SoftTokenView]:
    with store.read() as s:
        stmt = select(SoftToken).order_by(SoftToken.id)
        if user is not None:
            stmt = stmt.where(SoftToken.user_id == find_user(s, user).id)
        if state is not None:
            stmt = stmt.where(SoftToken.state == state)
        views = []
        for token in s.scalars(stmt):
            cert = s.scalars(
                select(Certificate).where(Certificate.soft_token_id == token.id)
            ).first()
            views.append(
                SoftTokenView(
                    id=token.id,
                    user_email=token.user.email,
                    token_type=token.token_type,
                    state=token.state,
                    requested_by=token.requested_by,
                    approved_by=token.approved_by,
                    serial=cert.serial if cert else None,
                    p12_path=token.p12_path,
                )
            )
        return views
