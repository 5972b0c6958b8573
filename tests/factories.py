"""Rows in any state, for tests that need an entity without walking its whole life."""

from __future__ import annotations

import datetime as dt
import itertools

from sqlalchemy.orm import Session

from db.models import (
    ApprovalRequest,
    BatchOrder,
    BureauFile,
    BureauLine,
    CardUpdate,
    Certificate,
    Credential,
    Incident,
    ProductionAttempt,
    SoftToken,
    Stateful,
    User,
    utcnow,
)
from schemas.states import CredentialKind

_seq = itertools.count(1)


def user(session: Session, state: str = "active") -> User:
    n = next(_seq)
    row = User(
        state=state,
        email=f"user{n}@example.org",
        first_name="Ada",
        last_name=f"Lovelace{n}",
        upn=f"user{n}@example.org",
        organization="Example",
        org_unit="Engineering",
    )
    session.add(row)
    session.flush()
    return row


def credential(session: Session, state: str = "requested", kind: str = "card") -> Credential:
    row = Credential(
        state=state,
        kind=kind,
        user=user(session) if kind == CredentialKind.CARD else None,
        requested_by="tests",
    )
    session.add(row)
    session.flush()
    return row


def attempt(session: Session, state: str = "in_progress") -> ProductionAttempt:
    cred = credential(session, "producing")
    row = ProductionAttempt(
        state=state,
        credential_id=cred.id,
        number=1,
        station_id="ST1",
        station_instance="i1",
        lease_expires_at=utcnow() + dt.timedelta(seconds=30),
    )
    session.add(row)
    session.flush()
    return row


def certificate(session: Session, state: str = "valid") -> Certificate:
    cred = credential(session, "active")
    now = utcnow()
    row = Certificate(
        state=state,
        credential_id=cred.id,
        usage="authentication",
        serial=f"{next(_seq):032x}",
        subject="CN=test",
        not_before=now,
        not_after=now + dt.timedelta(days=1),
        pem="-",
    )
    session.add(row)
    session.flush()
    return row


def soft_token(session: Session, state: str = "requested") -> SoftToken:
    row = SoftToken(
        state=state, user_id=user(session).id, token_type="user-p12", requested_by="alice"
    )
    session.add(row)
    session.flush()
    return row


def incident(session: Session, state: str = "open") -> Incident:
    row = Incident(
        state=state,
        credential_id=credential(session, "inactive").id,
        kind="lost",
        declared_by="tests",
    )
    session.add(row)
    session.flush()
    return row


def batch(session: Session, state: str = "requested") -> BatchOrder:
    row = BatchOrder(state=state, name="b.csv", requested_by="alice")
    session.add(row)
    session.flush()
    return row


def approval_request(session: Session, state: str = "pending") -> ApprovalRequest:
    row = ApprovalRequest(
        state=state,
        process="card.lock",
        target=str(next(_seq)),
        params={},
        summary="lock a card",
        requested_by="principal:1",
    )
    session.add(row)
    session.flush()
    return row


def card_update(session: Session, state: str = "pending") -> CardUpdate:
    row = CardUpdate(
        state=state,
        credential_id=credential(session, "active").id,
        kind="renew",
        requested_by="principal:1",
        plan={},
        journal={},
    )
    session.add(row)
    session.flush()
    return row


def bureau_line(session: Session, state: str = "ordered") -> BureauLine:
    n = next(_seq)
    order = BureauFile(
        bureau="east",
        kind="order",
        file_id=f"order-{n}",
        sequence=n,
        sha256=f"{n:064x}",
        record_count=1,
        created_by="tests",
    )
    session.add(order)
    session.flush()
    row = BureauLine(
        state=state,
        order_line_id=f"line-{n}",
        bureau="east",
        credential_id=credential(session, "at_bureau").id,
        order_file_id=order.id,
    )
    session.add(row)
    session.flush()
    return row


def entity(session: Session, machine: str, state: str) -> Stateful:
    """A row governed by ``machine`` in ``state``."""
    makers = {
        "card": lambda: credential(session, state, "card"),
        "temp_card": lambda: credential(session, state, "temp_card"),
        "user": lambda: user(session, state),
        "attempt": lambda: attempt(session, state),
        "certificate": lambda: certificate(session, state),
        "batch": lambda: batch(session, state),
        "soft_token": lambda: soft_token(session, state),
        "incident": lambda: incident(session, state),
        "approval_request": lambda: approval_request(session, state),
        "card_update": lambda: card_update(session, state),
        "bureau_line": lambda: bureau_line(session, state),
    }
    return makers[machine]()
