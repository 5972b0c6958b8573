"""PIN letters by mail (``pin_letter_delivery = "mail"``): the holder gets the PDF once,
through a real SMTP server, however often the message is delivered; the PIN is in the
attachment only, never in the mail's text or the log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from structlog.testing import capture_logs

from db.models import Credential, utcnow
from db.secrets import SecretBox, context
from schemas.messages import PrepareCard, SendPinLetter
from schemas.policy import Policy
from tests import factories
from workers.ca import CertificateAuthority
from workers.context import WorkerContext
from workers.letters import mask_card_number
from workers.mail import Mailer
from workers.notify import send_pin_letter
from workers.prepare import prepare_card


@dataclass
class Inbox:
    messages: list[Any] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            email.message_from_bytes(envelope.content, policy=email.policy.default)
        )
        return "250 OK"


@pytest.fixture
def smtp():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    inbox = Inbox()
    server = Controller(inbox, hostname="127.0.0.1", port=port)
    server.start()
    yield inbox, port
    server.stop()


def _ctx(store, tmp_path, port: int, delivery: str) -> WorkerContext:
    box = SecretBox(os.urandom(32))
    return WorkerContext(
        store=store,
        box=box,
        policy=Policy(pin_letter_delivery=delivery),
        ca=CertificateAuthority.load_or_create(tmp_path / "ca", box),
        letters_dir=tmp_path / "letters",
        crl_dir=tmp_path / "crl",
        mailer=Mailer.from_url(f"smtp://127.0.0.1:{port}", "cards@example.org"),
    )


def _produced(ctx: WorkerContext) -> tuple[int, str, str]:
    with ctx.store.tx() as s:
        cid = factories.credential(s, "approved").id
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with ctx.store.tx() as s:
        cred = s.get(Credential, cid)
        assert cred is not None
        assert cred.user is not None
        cred.state = "active"  # as if produced
        cred.valid_until = utcnow() + dt.timedelta(days=30)
        sealed, holder = cred.pin_sealed, cred.user.email
    assert sealed is not None
    pin = ctx.box.open(sealed, context=context("credential", cid, "pin")).reveal()
    return cid, pin, holder


def test_the_holder_gets_the_pin_letter_by_mail_once(store, tmp_path, smtp):
    inbox, port = smtp
    ctx = _ctx(store, tmp_path, port, "mail")
    cid, pin, holder = _produced(ctx)
    with capture_logs() as events:
        send_pin_letter(ctx, SendPinLetter(credential_id=cid))
        send_pin_letter(ctx, SendPinLetter(credential_id=cid))  # redelivered
    (message,) = inbox.messages
    assert message["To"] == holder
    (attachment,) = message.iter_attachments()
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content().startswith(b"%PDF")
    assert pin not in message.get_body(("plain",)).get_content()
    assert pin not in repr(events)
    with store.read() as s:
        cred = s.get(Credential, cid)
        assert cred is not None
        assert cred.pin_letter_mailed_at is not None


def test_a_letter_written_before_mail_was_sent_is_mailed_on_the_next_delivery(
    store, tmp_path, smtp
):
    inbox, port = smtp
    printed = _ctx(store, tmp_path, port, "print")
    cid, _pin, _holder = _produced(printed)
    send_pin_letter(printed, SendPinLetter(credential_id=cid))
    assert inbox.messages == []  # printing only
    mailing = dataclasses.replace(printed, policy=Policy(pin_letter_delivery="mail"))
    send_pin_letter(mailing, SendPinLetter(credential_id=cid))
    assert len(inbox.messages) == 1


def test_the_mail_shows_the_card_number_masked_as_the_letter_does(store, tmp_path, smtp):
    inbox, port = smtp
    ctx = _ctx(store, tmp_path, port, "mail")
    cid, _pin, _holder = _produced(ctx)
    send_pin_letter(ctx, SendPinLetter(credential_id=cid))
    (message,) = inbox.messages
    with store.read() as s:
        cred = s.get(Credential, cid)
        assert cred is not None
        number = cred.card_number
    assert number is not None
    masked = mask_card_number(number)
    (attachment,) = message.iter_attachments()
    name = attachment.get_filename()
    text = message.get_body(("plain",)).get_content()
    for shown in (message["Subject"], text, name):
        assert number not in shown
    assert masked in message["Subject"]
    assert masked in text
    assert name.endswith(f"{number[-4:]}.pdf")
