"""The embedded line end to end: every card produced once, the books balance, no PIN leaks."""

from __future__ import annotations

import logging

import pytest
import structlog
from sqlalchemy import select

from db.models import AuditEvent, Credential, OutboxMessage
from db.secrets import context
from ops.config import Settings
from ops.line import EmbeddedLine, LineOptions
from ops.logging import configure
from ops.store import open_migrated
from producers.approvals import approve_batch
from producers.batch_import import import_batch
from producers.generate import write_users_csv
from schemas.policy import Policy
from tests.invariants import assert_books_balance


def _line(tmp_path, backend, *, cards, fault_rate, policy=None, stations=3):
    kind, url = backend
    settings = Settings(data_dir=tmp_path / "data", database_url=url, broker_url=kind.broker_url())
    policy = policy or Policy()
    store = open_migrated(settings)
    csv = write_users_csv(tmp_path / "users.csv", cards, seed=7)
    report = import_batch(
        store, csv, policy=policy, requested_by="alice", reject_dir=tmp_path / "rejects"
    )
    if policy.approval_required:
        approve_batch(store, report.batch_id, by="bob")
    line = EmbeddedLine(
        settings,
        policy,
        LineOptions(stations=stations, time_scale=0, fault_rate=fault_rate, seed=11),
    )
    return line, store


def _run(line):
    line.start()
    try:
        assert line.wait_drained(timeout_s=120), "the line did not drain in time"
    finally:
        line.stop()


def test_every_card_ends_active_or_failed_and_the_books_balance_under_faults(tmp_path, backend):
    policy = Policy()
    line, store = _line(tmp_path, backend, cards=30, fault_rate=0.3, policy=policy)
    _run(line)
    books = assert_books_balance(store, policy)
    assert books["spoiled"] > 0, "a 30% fault rate should have spoiled some blanks"
    summary = line.summary()
    assert summary.drained
    assert summary.audit_chain_ok
    assert summary.blanks_used == books["blanks"]
    faces = list(line.paths.faces.glob("*-front.png"))
    assert len(faces) >= books["cards"].get("active", 0)


def test_without_an_approval_step_cards_go_straight_to_the_line(tmp_path, backend):
    policy = Policy(approval_required=False)
    line, store = _line(tmp_path, backend, cards=5, fault_rate=0, policy=policy)
    _run(line)
    assert assert_books_balance(store, policy)["cards"] == {"active": 5}


def test_with_an_activation_step_produced_cards_wait_as_issued(tmp_path, backend):
    policy = Policy(activation_step=True)
    line, store = _line(tmp_path, backend, cards=4, fault_rate=0, policy=policy)
    _run(line)
    with store.read() as s:
        assert {c.state for c in s.scalars(select(Credential))} == {"issued"}


@pytest.mark.parametrize("fault_rate", [0.25])
def test_no_pin_or_puk_appears_in_logs_messages_or_audit(tmp_path, backend, fault_rate):
    log_file = tmp_path / "log.jsonl"
    configure(log_file=log_file, level="DEBUG", console_level="CRITICAL")
    try:
        line, store = _line(tmp_path, backend, cards=12, fault_rate=fault_rate)
        _run(line)
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    with store.read() as s:
        secrets = []
        for cred in s.scalars(select(Credential)):
            for field in ("pin", "puk"):
                sealed = getattr(cred, f"{field}_sealed")
                secrets.append(
                    line.box.open(sealed, context=context("credential", cred.id, field)).reveal()
                )
        payloads = [str(m.payload) for m in s.scalars(select(OutboxMessage))]
        reasons = [f"{e.reason} {e.actor}" for e in s.scalars(select(AuditEvent))]
    text = log_file.read_text()
    assert "station.card_done" in text  # the log did capture the run
    # Recovery would hide them from the books, so errors (a deadlock, a crashed
    # produce) are checked for here.
    assert '"level": "error"' not in text, [ln for ln in text.splitlines() if '"error"' in ln][:3]
    # Each secret is checked as a quoted token or with its own boundaries so a PIN that
    # happens to be a substring of a timestamp or serial is not a false alarm.
    for secret in secrets:
        assert f'"{secret}"' not in text
        assert f"={secret} " not in text
        assert not any(f"'{secret}'" in p for p in payloads)
        assert not any(secret in r.split() for r in reasons)
