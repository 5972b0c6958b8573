"""Errors have a policy: a transient error is retried by dramatiq with backoff and logged
as a warning; a permanent one (here: a sealed value that no longer opens) is recorded
on its row as needing attention, is not retried and is not re-driven until resolved;
every log line of a message carries the message id, the actor and the work's ids."""

from __future__ import annotations

import socket
import time

import dramatiq
import pytest
import structlog
from sqlalchemy import func, select, update
from structlog.testing import capture_logs

from db import attention
from db.models import Attention, Credential, OutboxMessage
from db.summary import summarise
from schemas.messages import PrepareCard, SendPinLetter
from schemas.policy import Policy
from schemas.states import CertUsage
from tests import factories
from workers import actors
from workers.broker import make_broker
from workers.ca import CertificateAuthority
from workers.context import WorkerContext
from workers.mail import Mailer
from workers.prepare import prepare_card
from workers.relay import StallPolicy, publish_pending, redrive


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ctx(store, box, tmp_path):
    return WorkerContext(
        store=store,
        box=box,
        policy=Policy(
            certificates=(CertUsage.AUTHENTICATION, CertUsage.SIGNATURE), pin_letter_delivery="mail"
        ),
        ca=CertificateAuthority.load_or_create(tmp_path / "ca", box),
        letters_dir=tmp_path / "letters",
        crl_dir=tmp_path / "crl",
        mailer=Mailer(scheme="smtp", host="127.0.0.1", port=_dead_port(), sender="x@example.org"),
    )


def _run_worker(store, ctx, seconds: float):
    broker = make_broker("memory://")
    actors.register(broker, ctx)
    worker = dramatiq.Worker(broker, worker_threads=1)
    worker.start()
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            publish_pending(store, broker)
            time.sleep(0.05)
    finally:
        worker.stop()
    return broker


def _active_card(store, ctx) -> int:
    with store.tx() as s:
        cid = factories.credential(s, "approved").id
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with store.tx() as s:  # produced (the station's part is not what this test is about)
        s.execute(update(Credential).where(Credential.id == cid).values(state="active"))
        s.execute(update(OutboxMessage).values(sent_at=func.now()))
    from db import outbox

    with store.tx(audited=False) as s:
        outbox.add(s, SendPinLetter(credential_id=cid))
    return cid


def test_a_transient_error_is_retried_with_backoff_and_logged_as_a_warning(store, ctx):
    cid = _active_card(store, ctx)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        _run_worker(store, ctx, 1.5)
    transient = [e for e in logs if e["event"] == "actor.transient_error"]
    assert len(transient) >= 2, "the mail should have been tried again"
    assert all(e["log_level"] == "warning" for e in transient)
    assert [e["retries"] for e in transient[:2]] == [0, 1]
    # Every line of the message carries its id, the actor and what it works on.
    first = transient[0]
    assert first["actor"] == "notify"
    assert first["credential_id"] == cid
    assert first["message_id"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical", "exception")]
    with store.read() as s:
        assert attention.open_count(s) == 0  # transient: nothing for a person


def test_a_permanent_error_needs_attention_and_is_not_redriven_until_resolved(store, ctx):
    with store.tx() as s:
        cid = factories.credential(s, "approved").id
    prepare_card(ctx, PrepareCard(credential_id=cid))
    with store.tx() as s:  # a damaged sealed value: the card can never be finished as is
        s.execute(
            update(Credential)
            .where(Credential.id == cid)
            .values(state="approved", escrow_key_sealed="v1:damaged", card_number="1")
        )
    from db import outbox

    with store.tx(audited=False) as s:
        s.execute(update(OutboxMessage).values(sent_at=func.now()))
        outbox.add(s, PrepareCard(credential_id=cid))
    with capture_logs() as logs:
        _run_worker(store, ctx, 1.0)
    errors = [e for e in logs if e["event"] == "actor.needs_attention"]
    assert len(errors) == 1, "a permanent error is not retried"
    with store.read() as s:
        (item,) = s.scalars(select(Attention)).all()
        summary = summarise(s)
    assert (item.entity, item.entity_id, item.wait) == ("credential", str(cid), "prepare_card")
    assert summary.needs_attention[0]["reason"] == item.reason
    assert not summary.drained
    assert redrive(store, StallPolicy(), everything=True) == 0  # left for a person
    with store.tx() as s:
        attention.resolve(s, item.id, by="ops")
    assert redrive(store, StallPolicy(), everything=True) == 1  # resolved: tried again
    from db.models import AuditEvent

    with store.read() as s:
        (event,) = s.scalars(select(AuditEvent).where(AuditEvent.entity == "attention")).all()
    assert (event.actor, event.action) == ("ops", "resolve")
