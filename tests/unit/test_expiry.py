"""The scheduled expiry check: what it finds, whom it reminds and how often, what it
moves to ``expired``; on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from db.models import (
    AuditEvent,
    Certificate,
    Credential,
    OutboxMessage,
    Reminder,
    SoftToken,
    User,
    utcnow,
)
from db.secrets import context
from ops import expiry as ops_expiry
from ops.cli.expiry import expiry as expiry_group
from ops.config import Settings
from producers.expiry import check_expiry
from schemas.errors import ConfigurationError
from schemas.expiry import ExpiryConfig
from schemas.messages import NOTIFY_JOB, SendReminder
from tests import factories

DAILY = ExpiryConfig()
_numbers = itertools.count(1)


def _holder(s, email: str | None = None, state: str = "active") -> User:
    user = factories.user(s, state)
    if email is not None:
        user.email = email
    s.flush()
    return user


def _card(s, now, days, *, state="active", holder=None, kind="card") -> Credential:
    until = now + dt.timedelta(days=days)
    cred = Credential(
        kind=kind,
        state=state,
        user=holder,
        requested_by="tests",
        card_number=f"{next(_numbers):016d}",
        valid_until=until if kind == "card" else now + dt.timedelta(days=900),
        assigned_until=until if kind == "temp_card" else None,
    )
    s.add(cred)
    s.flush()
    return cred


def _cert(s, now, days, *, state="valid", card=None, token=None, usage=None) -> Certificate:
    cert = Certificate(
        state=state,
        credential_id=card.id if card else None,
        soft_token_id=token.id if token else None,
        usage=usage or ("authentication" if card else "user-p12"),
        serial=f"{next(_numbers):040x}",
        subject="CN=test",
        not_before=now - dt.timedelta(days=700),
        not_after=now + dt.timedelta(days=days),
        pem="-",
    )
    s.add(cert)
    s.flush()
    return cert


def _token(s, holder, state="issued") -> SoftToken:
    token = SoftToken(state=state, user_id=holder.id, token_type="user-p12", requested_by="t")
    s.add(token)
    s.flush()
    return token


def _reminders(store) -> list[tuple[str, int, str, str, str]]:
    with store.read() as s:
        rows = s.scalars(select(Reminder).order_by(Reminder.id))
        return [(r.entity, r.entity_id, r.kind, r.period, r.recipient) for r in rows]


def _reminder_messages(store) -> list[dict[str, Any]]:
    with store.read() as s:
        payloads = [dict(r.payload) for r in s.scalars(select(OutboxMessage))]
    return [p for p in payloads if p.get("type") == "send_reminder"]


def _state(store, model, row_id) -> str:
    with store.read() as s:
        return str(s.get(model, row_id).state)


@pytest.fixture
def now() -> dt.datetime:
    return utcnow()


@pytest.fixture
def line(store, now):
    """A card, a temp card and certificates in each interesting position."""
    with store.tx() as s:
        ada = _holder(s)
        far = _card(s, now, 400, holder=ada)
        ids = {
            "ada": ada.email,
            "expiring_card": _card(s, now, 10, holder=ada).id,
            "expired_card": _card(s, now, -1, holder=_holder(s), state="inactive").id,
            "far_card": far.id,
            "temp_card": _card(s, now, 2, holder=_holder(s), kind="temp_card", state="assigned").id,
            "card_cert": _cert(s, now, 5, card=far).id,
            "token_cert": _cert(s, now, -2, token=_token(s, _holder(s))).id,
            "held_cert": _cert(s, now, -3, state="hold", card=far, usage="signature").id,
        }
    return ids


def test_expiring_and_expired_cards_temp_cards_and_certificates_are_found_and_reminded(
    store, now, line
):
    report = check_expiry(store, DAILY, now=now)

    assert report.found == {
        "card": {"expiring": 1, "expired": 1},
        "temp_card": {"expiring": 1, "expired": 0},
        "certificate": {"expiring": 1, "expired": 2},
    }
    assert report.reminded == report.found
    period = now.date().isoformat()
    got = {(e, i, k) for e, i, k, p, _ in _reminders(store) if p == period}
    assert got == {
        ("card", line["expiring_card"], "expiring"),
        ("card", line["expired_card"], "expired"),
        ("temp_card", line["temp_card"], "expiring"),
        ("certificate", line["card_cert"], "expiring"),
        ("certificate", line["token_cert"], "expired"),
        ("certificate", line["held_cert"], "expired"),
    }
    assert ("card", line["far_card"]) not in {(e, i) for e, i, *_ in _reminders(store)}
    assert len(_reminder_messages(store)) == 6
    recipients = {r[4] for r in _reminders(store) if r[:2] == ("card", line["expiring_card"])}
    assert recipients == {line["ada"]}


def test_a_second_run_in_the_same_period_queues_nothing_new(store, now, line):
    check_expiry(store, DAILY, now=now)
    again = check_expiry(store, DAILY, now=now + dt.timedelta(hours=1))

    assert sum(sum(k.values()) for k in again.reminded.values()) == 0
    assert len(_reminders(store)) == 6
    assert len(_reminder_messages(store)) == 6


def test_a_new_period_reminds_expiring_items_again_and_expired_ones_not_twice(store, now, line):
    check_expiry(store, DAILY, now=now)
    tomorrow = check_expiry(store, DAILY, now=now + dt.timedelta(days=1))

    # Expiring items again; the expired card and certificates moved to expired (or,
    # on hold, were told once); the temp card is still before its end.
    assert tomorrow.reminded == {
        "card": {"expiring": 1, "expired": 0},
        "temp_card": {"expiring": 1, "expired": 0},
        "certificate": {"expiring": 1, "expired": 0},
    }
    assert len(_reminders(store)) == 9


def test_an_overdue_temp_card_is_reminded_every_period_and_reported_not_moved(store, now, line):
    later = now + dt.timedelta(days=3)
    first = check_expiry(store, DAILY, now=later)
    second = check_expiry(store, DAILY, now=later + dt.timedelta(days=1))

    for report in (first, second):
        assert report.reminded["temp_card"] == {"expiring": 0, "expired": 1}
        assert len(report.overdue_temp_cards) == 1
    assert _state(store, Credential, line["temp_card"]) == "assigned"


def test_weekly_reminders_repeat_once_per_iso_week(store, now, line):
    weekly = ExpiryConfig(frequency="weekly")
    monday = now - dt.timedelta(days=now.weekday())
    check_expiry(store, weekly, now=monday)
    same_week = check_expiry(store, weekly, now=monday + dt.timedelta(days=4))
    next_week = check_expiry(store, weekly, now=monday + dt.timedelta(days=7))

    assert same_week.reminded["card"]["expiring"] == 0
    assert next_week.reminded["card"]["expiring"] == 1
    year, week, _ = monday.isocalendar()
    assert weekly.period(monday) == f"{year}-W{week:02d}"
    assert {r[3] for r in _reminders(store)} == {
        weekly.period(monday),
        weekly.period(monday + dt.timedelta(days=7)),
    }


def test_expired_cards_and_certificates_move_to_expired_audited_with_reason_expired(
    store, now, line
):
    report = check_expiry(store, DAILY, now=now)

    assert report.expired == {"card": 1, "temp_card": 0, "certificate": 1}
    assert _state(store, Credential, line["expired_card"]) == "expired"
    assert _state(store, Certificate, line["token_cert"]) == "expired"
    assert _state(store, Certificate, line["held_cert"]) == "hold"  # hold has no expire edge
    assert _state(store, Credential, line["expiring_card"]) == "active"
    with store.read() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "expire")).all()
    assert {(e.entity, int(e.entity_id)) for e in events} == {
        ("card", line["expired_card"]),
        ("certificate", line["token_cert"]),
    }
    assert all(e.reason == "expired" and e.actor == "scheduler:expiry" for e in events)
    assert {e.from_state for e in events} == {"inactive", "valid"}


def test_with_expire_states_off_nothing_changes_state(store, now, line):
    report = check_expiry(store, ExpiryConfig(expire_states=False), now=now)

    assert report.expired == {"card": 0, "temp_card": 0, "certificate": 0}
    assert report.reminded["card"]["expired"] == 1
    assert _state(store, Credential, line["expired_card"]) == "inactive"
    with store.read() as s:
        assert s.scalar(select(AuditEvent).where(AuditEvent.action == "expire")) is None


def test_nothing_is_sent_for_items_without_email_or_already_revoked_or_locked(store, now):
    with store.tx() as s:
        _card(s, now, 5, holder=_holder(s, email=""))
        _card(s, now, 5, holder=_holder(s, state="locked"))
        _card(s, now, 5, holder=_holder(s), state="locked")
        _card(s, now, -5, holder=_holder(s), state="cancelled")
        _card(s, now, 5, kind="temp_card", state="unassigned")
        card = _card(s, now, 400, holder=_holder(s))
        _cert(s, now, 5, state="revoked", card=card)
        _cert(s, now, -5, state="expired", card=card, usage="signature")
        _cert(s, now, 5, card=_card(s, now, 400, holder=_holder(s), state="cancelled"))
        _cert(s, now, 5, token=_token(s, _holder(s), state="revoked"))
        _cert(s, now, 5, card=_card(s, now, 2, kind="temp_card", state="unassigned"))

    report = check_expiry(store, DAILY, now=now)

    assert _reminders(store) == []
    assert _reminder_messages(store) == []
    # Found (still in use) but nobody to tell: no e-mail, a locked holder, a
    # certificate on a cancelled card, in a revoked soft token, on an unassigned temp card.
    assert report.no_recipient == 5


def test_two_checks_running_at_once_queue_each_reminder_once(store, now, line):
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            check_expiry(store, DAILY, now=now)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert len(_reminders(store)) == 6
    assert len(_reminder_messages(store)) == 6
    with store.read() as s:
        expires = s.scalars(select(AuditEvent).where(AuditEvent.action == "expire")).all()
    assert len(expires) == 2


def test_reminders_carry_the_reminder_id_only_and_no_secret(store, box, now):
    with store.tx() as s:
        card = _card(s, now, 3, holder=_holder(s))
        card.pin_sealed = box.seal("493817", context=context("credential", card.id, "pin"))

    check_expiry(store, DAILY, now=now)

    (payload,) = _reminder_messages(store)
    assert set(payload) == {"type", "reminder_id"}
    job = NOTIFY_JOB.validate_python(payload)
    assert isinstance(job, SendReminder)
    with store.read() as s:
        reminder = s.get(Reminder, job.reminder_id)
        row = {c.name: getattr(reminder, c.name) for c in Reminder.__table__.columns}
        sealed = s.get(Credential, card.id).pin_sealed
    text = json.dumps([payload, row], default=str)
    assert "493817" not in text
    assert sealed not in text


def test_unsent_reminders_of_the_period_are_published_again_after_a_while(store, now, line):
    check_expiry(store, DAILY, now=now)
    with store.tx(audited=False) as s:
        s.execute(update(Reminder).values(created_at=utcnow() - dt.timedelta(hours=1)))
        first = s.scalars(select(Reminder.id).order_by(Reminder.id)).first()
        s.execute(update(Reminder).where(Reminder.id != first).values(sent_at=utcnow()))

    report = check_expiry(store, DAILY, now=now)

    assert report.redriven == 1
    assert [m["reminder_id"] for m in _reminder_messages(store)].count(first) == 2
    # A reminder of an earlier period is not: the new period has its own.
    assert check_expiry(store, DAILY, now=now + dt.timedelta(days=1)).redriven == 0


def test_expiry_config_comes_from_the_expiry_table_and_rejects_unknown_keys(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[expiry]\nwarn_days = 14\nfrequency = "weekly"\nexpire_states = false\n')
    config = Settings(config=good).expiry
    assert config == ExpiryConfig(warn_days=14, frequency="weekly", expire_states=False)
    assert Settings().expiry == ExpiryConfig()
    bad = tmp_path / "bad.toml"
    bad.write_text('[expiry]\nfrequency = "hourly"\n')
    with pytest.raises(ConfigurationError, match=r"expiry\.frequency"):
        Settings(config=bad)


def test_the_check_command_prints_its_counts_and_json(store, database_url, now, line, tmp_path):
    config = tmp_path / "cardline.toml"
    config.write_text("[expiry]\nwarn_days = 20\n")
    env = {"CARDLINE_DATABASE_URL": database_url, "CARDLINE_CONFIG": str(config)}
    args = ["check", "--now", now.isoformat(), "--json", "--data-dir", str(tmp_path / "d")]

    result = CliRunner().invoke(expiry_group, args, env=env, catch_exceptions=False)

    assert result.exit_code == 0, result.output
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["reminded"]["card"] == {"expiring": 1, "expired": 1}
    assert out["expired"]["card"] == 1
    assert "card: expiring 1 (reminded 1)" in result.output
    bad = CliRunner().invoke(expiry_group, [*args[:1], "--now", "soon", *args[4:]], env=env)
    assert bad.exit_code == 2
    assert "not an ISO date" in bad.output


def test_the_loop_checks_at_once_and_survives_a_failed_check(store, now, line, monkeypatch):
    calls: list[int] = []
    real = check_expiry

    def flaky(store_, config):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return real(store_, config, now=now)

    monkeypatch.setattr(ops_expiry, "check_expiry", flaky)
    monkeypatch.setattr(ops_expiry, "RETRY_S", 0.05)
    stop = threading.Event()
    loop = threading.Thread(
        target=ops_expiry.run_expiry_loop,
        args=(Settings(), stop),
        kwargs={"store": store, "config": ExpiryConfig(check_interval_s=3600)},
    )
    loop.start()
    deadline = utcnow() + dt.timedelta(seconds=20)
    while len(_reminders(store)) < 6 and utcnow() < deadline:
        stop.wait(0.05)
    stop.set()
    loop.join(timeout=10)

    assert not loop.is_alive()
    assert len(calls) == 2
    assert len(_reminders(store)) == 6
