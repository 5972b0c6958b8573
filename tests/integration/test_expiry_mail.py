"""Expiry reminders mailed by the ``notify`` worker to a real SMTP server (aiosmtpd):
each once, however often its message arrives, naming the item and its date."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import itertools
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from db.models import Certificate, Credential, OutboxMessage, Reminder, SoftToken, utcnow
from db.secrets import SecretBox, context
from producers.expiry import check_expiry
from schemas.expiry import ExpiryConfig
from schemas.messages import NOTIFY_JOB
from schemas.policy import Policy
from tests import factories
from workers.ca import CertificateAuthority
from workers.context import WorkerContext
from workers.mail import Mailer, MailError
from workers.notify import notify_job

CONFIG = ExpiryConfig(warn_days=30)
_numbers = itertools.count(1)


@dataclass
class Inbox:
    messages: list[email.message.EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"

    def body(self, message: email.message.EmailMessage) -> str:
        body = message.get_body(("plain",))
        assert body is not None
        return str(body.get_content())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def smtp() -> Any:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, Mailer(scheme="smtp", host="127.0.0.1", port=port, sender="pki@example.org")
    controller.stop()


@pytest.fixture(scope="module")
def module_box() -> SecretBox:
    return SecretBox(os.urandom(32))


@pytest.fixture(scope="module")
def ca(tmp_path_factory, module_box) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"), module_box)


@pytest.fixture
def inbox(smtp) -> Inbox:
    box: Inbox = smtp[0]
    box.messages.clear()
    return box


def _ctx(store, ca, module_box, tmp_path, mailer: Mailer | None) -> WorkerContext:
    return WorkerContext(
        store=store,
        box=module_box,
        policy=Policy(),
        ca=ca,
        letters_dir=tmp_path / "letters",
        crl_dir=tmp_path / "crl",
        mailer=mailer,
    )


@pytest.fixture
def ctx(store, ca, module_box, tmp_path, smtp) -> WorkerContext:
    return _ctx(store, ca, module_box, tmp_path, smtp[1])


@dataclass(frozen=True)
class Items:
    card: Credential
    temp: Credential
    cert: Certificate
    token_cert: Certificate
    holder_email: str
    pin: str


@pytest.fixture
def items(store, module_box) -> Items:
    now = utcnow()
    with store.tx() as s:
        ada = factories.user(s)
        card = Credential(
            kind="card",
            state="active",
            user_id=ada.id,
            requested_by="tests",
            card_number=f"{next(_numbers):016d}",
            valid_until=now + dt.timedelta(days=12),
        )
        temp = Credential(
            kind="temp_card",
            state="assigned",
            user_id=factories.user(s).id,
            requested_by="tests",
            card_number=f"9{next(_numbers):015d}",
            valid_until=now + dt.timedelta(days=900),
            assigned_until=now - dt.timedelta(hours=5),
        )
        s.add_all([card, temp])
        s.flush()
        card.pin_sealed = module_box.seal("493817", context=context("credential", card.id, "pin"))
        token = SoftToken(
            state="issued", user_id=factories.user(s).id, token_type="user-p12", requested_by="t"
        )
        s.add(token)
        s.flush()
        certs = [
            Certificate(
                state="valid",
                credential_id=card.id if owner == "card" else None,
                soft_token_id=token.id if owner == "token" else None,
                usage="authentication" if owner == "card" else "user-p12",
                serial=f"{next(_numbers):x}abcdef",
                subject="CN=test",
                not_before=now - dt.timedelta(days=700),
                not_after=now + dt.timedelta(days=days),
                pem="-",
            )
            for owner, days in (("card", 20), ("token", -1))
        ]
        s.add_all(certs)
        s.flush()
        return Items(card, temp, certs[0], certs[1], ada.email, "493817")


def _jobs(store) -> list[Any]:
    with store.read() as s:
        rows = s.scalars(select(OutboxMessage).order_by(OutboxMessage.id))
        return [
            NOTIFY_JOB.validate_python(r.payload)
            for r in rows
            if r.payload.get("type") == "send_reminder"
        ]


def _deliver(ctx, store) -> None:
    for job in _jobs(store):
        notify_job(ctx, job)


def _unsent(store) -> int:
    with store.read() as s:
        return len(s.scalars(select(Reminder).where(Reminder.sent_at.is_(None))).all())


def test_the_notify_worker_mails_each_reminder_once_and_marks_it_sent(ctx, store, items, inbox):
    report = check_expiry(store, CONFIG)
    assert sum(sum(k.values()) for k in report.reminded.values()) == 4

    _deliver(ctx, store)

    assert len(inbox.messages) == 4
    assert _unsent(store) == 0
    assert all(m["From"] == "pki@example.org" for m in inbox.messages)
    assert sum(m["To"] == items.holder_email for m in inbox.messages) == 2


def test_a_redelivered_send_reminder_sends_nothing(ctx, store, items, inbox):
    check_expiry(store, CONFIG)
    _deliver(ctx, store)
    _deliver(ctx, store)
    check_expiry(store, CONFIG)  # a second check in the period queues nothing either
    _deliver(ctx, store)

    assert len(inbox.messages) == 4


def test_mails_name_the_card_or_certificate_its_number_or_serial_and_the_date(
    ctx, store, items, inbox
):
    check_expiry(store, CONFIG)
    _deliver(ctx, store)
    by_subject = {str(m["Subject"]): inbox.body(m) for m in inbox.messages}

    card_day = items.card.valid_until.date().isoformat()
    subject = f"Your smart card {items.card.card_number} expires on {card_day}"
    assert subject in by_subject
    assert "renewal or a new card" in by_subject[subject]

    cert_day = items.cert.not_after.date().isoformat()
    (cert_mail,) = [b for s, b in by_subject.items() if items.cert.serial in s]
    assert f"authentication certificate (serial {items.cert.serial})" in cert_mail
    assert f"on smart card {items.card.card_number} expires on {cert_day}" in cert_mail

    (token_mail,) = [b for s, b in by_subject.items() if items.token_cert.serial in s]
    assert "expired on " + items.token_cert.not_after.date().isoformat() in token_mail
    assert "request a new software token" in token_mail

    (temp_mail,) = [b for s, b in by_subject.items() if items.temp.card_number in s]
    assert f"assignment of temporary card {items.temp.card_number} ended on" in temp_mail
    assert "hand it back" in temp_mail

    everything = "".join(m.as_string() for m in inbox.messages)
    assert items.pin not in everything


def test_without_a_mailer_reminders_stay_unsent_until_mail_is_configured(
    store, ca, module_box, tmp_path, items, inbox, smtp
):
    no_mail = _ctx(store, ca, module_box, tmp_path, None)
    check_expiry(store, CONFIG)
    _deliver(no_mail, store)
    assert inbox.messages == []
    assert _unsent(store) == 4

    with store.tx(audited=False) as s:  # the check re-publishes stalled reminders
        s.execute(update(Reminder).values(created_at=utcnow() - dt.timedelta(hours=1)))
    assert check_expiry(store, CONFIG).redriven == 4
    _deliver(_ctx(store, ca, module_box, tmp_path, smtp[1]), store)

    assert len(inbox.messages) == 4
    assert _unsent(store) == 0


def test_a_reminder_for_a_card_locked_since_the_check_is_dropped_not_mailed(
    ctx, store, items, inbox
):
    check_expiry(store, CONFIG)
    with store.tx() as s:
        s.execute(update(Credential).where(Credential.id == items.card.id).values(state="locked"))
        s.execute(
            update(Certificate).where(Certificate.id == items.cert.id).values(state="revoked")
        )

    _deliver(ctx, store)

    assert len(inbox.messages) == 2
    assert not any(items.card.card_number in str(m["Subject"]) for m in inbox.messages)
    with store.read() as s:
        left = s.scalars(select(Reminder.entity)).all()
    assert sorted(left) == ["certificate", "temp_card"]


def test_a_mail_failure_raises_mail_error_and_leaves_the_reminder_unsent(
    store, ca, module_box, tmp_path, items
):
    dead = Mailer(scheme="smtp", host="127.0.0.1", port=_free_port(), sender="x@example.org")
    check_expiry(store, CONFIG)
    job = _jobs(store)[0]

    with pytest.raises(MailError):
        notify_job(_ctx(store, ca, module_box, tmp_path, dead), job)
    assert _unsent(store) == 4
