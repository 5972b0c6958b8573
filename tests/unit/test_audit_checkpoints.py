"""Signed checkpoints bind the audit chain to a key the database does not hold: an
edit whose following hashes and head were recomputed passes ``verify_chain`` but not
the checkpoints. On SQLite and PostgreSQL, by exactly that edit."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from click.testing import CliRunner
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import delete, select, update
from structlog.testing import capture_logs

from db import checkpoints
from db.audit import _digest, verify_chain
from db.books import check_books
from db.checkpoints import CheckpointKey, Seal
from db.engine import open_store, sqlite_url
from db.models import AuditCheckpoint, AuditEvent, AuditHead, Credential, utcnow
from db.secrets import SecretBox
from db.summary import summarise
from db.transition import create
from ops.cli import main
from schemas.policy import Policy
from workers.relay import Relay


def _events(store, n: int) -> None:
    """``n`` audited changes, each in its own transaction (one event each)."""
    for _ in range(n):
        with store.tx() as s:
            create(s, Credential(state="requested", kind="temp_card", requested_by="t"), actor="t")


def _seal(store, key: CheckpointKey) -> Seal:
    report, sealed = checkpoints.seal(store, key, by="test")
    assert report.ok, report
    assert sealed is not None
    return sealed


def _attack(store, seq: int, reason: str = "nothing to see") -> None:
    """What someone who can write the database does: change one event, then recompute
    every following hash and the head the way db.audit computes them."""
    with store.tx(audited=False) as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == seq).values(reason=reason))
        head = s.get(AuditHead, 1)
        prev = s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq - 1)) or "0" * 64
        for event in s.scalars(
            select(AuditEvent).where(AuditEvent.seq >= seq).order_by(AuditEvent.seq)
        ):
            event.prev_hash = prev
            event.hash = prev = _digest(event)
        head.hash = prev


def _verify(store, key, **kwargs):
    with store.read() as s:
        return checkpoints.verify(s, key, **kwargs)


def _key() -> CheckpointKey:
    return CheckpointKey.from_box(SecretBox(os.urandom(32)))


def test_an_edit_with_recomputed_hashes_and_head_is_found_at_its_checkpoint(store):
    key = _key()
    _events(store, 3)
    _seal(store, key)
    _events(store, 1)
    _seal(store, key)  # checkpoint 4
    _events(store, 2)
    _seal(store, key)
    assert _verify(store, key, full=True).ok
    _attack(store, 4)
    with store.read() as s:
        assert verify_chain(s).ok  # the attack works on the hash chain alone
    for full in (True, False):  # incremental starts at checkpoint 6, then locates it
        report = _verify(store, key, full=full)
        assert not report.ok
        assert (report.first_bad_seq, report.bad_checkpoint) == (4, 4), report
    # The attacker's next move, rewriting the checkpoint to the new hash, breaks its MAC.
    with store.tx(audited=False) as s:
        new = s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == 4))
        s.execute(update(AuditCheckpoint).where(AuditCheckpoint.seq == 4).values(hash=new))
    report = _verify(store, key, full=True)
    assert report.bad_checkpoint == 4
    assert "not signed" in (report.problem or "")


def test_status_and_the_books_find_the_edit_when_they_hold_the_key(store):
    key = _key()
    _events(store, 4)
    _seal(store, key)
    _attack(store, 2)
    with store.read() as s:
        assert summarise(s).audit_chain_ok is True  # without the key: as before
        summary = summarise(s, checkpoint_key=key)
        assert summary.audit_chain_ok is False
        assert summary.audit_checkpoints_checked
        assert summary.audit_sealed_seq == 4
        problems = check_books(s, Policy(), expect_letters=False, checkpoint_key=key).problems
    assert any("checkpoint 4" in p for p in problems), problems


def test_a_checkpoint_under_another_key_is_reported(store):
    key = _key()
    _events(store, 3)
    _seal(store, key)
    _events(store, 2)
    with store.read() as s:
        head = s.get(AuditHead, 1)
        seq, head_hash = head.seq, head.hash
    now = utcnow()
    with store.tx(audited=False) as s:
        forged = _key().mac(seq, head_hash, now)
        s.add(AuditCheckpoint(seq=seq, hash=head_hash, mac=forged, created_at=now, created_by="x"))
    for full in (True, False):
        report = _verify(store, key, full=full)
        assert (report.ok, report.bad_checkpoint) == (False, 5), report


def test_incremental_verification_reads_only_events_after_the_last_verified_checkpoint(store):
    key = _key()
    _events(store, 5)
    _seal(store, key)
    _events(store, 3)
    # Tampered without recomputing: verify_chain sees it; a checkpoint-incremental
    # verification does not read event 2 again, a full one does.
    with store.tx(audited=False) as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(reason="x"))
    with store.read() as s:
        assert verify_chain(s).first_bad_seq == 2
    report = _verify(store, key)
    # The checkpoint's own event, then 6..8.
    assert (report.ok, report.from_seq, report.events_read) == (True, 5, 4)
    full = _verify(store, key, full=True)
    assert (full.ok, full.first_bad_seq, full.events_read) == (False, 2, 2)
    # A verification that passed marks its checkpoint: the next one starts there.
    _seal(store, key)
    report = _verify(store, key)
    assert (report.from_seq, report.events_read) == (8, 1)


def test_deleted_newest_checkpoints_roll_back_what_is_proved_unless_remembered(store):
    key = _key()
    _events(store, 3)
    _seal(store, key)
    _events(store, 3)
    newest = _seal(store, key)
    _attack(store, 5)
    with store.tx(audited=False) as s:
        s.execute(delete(AuditCheckpoint).where(AuditCheckpoint.seq == 6))
    # Not detectable from the database alone: the proof rolls back to checkpoint 3.
    report = _verify(store, key, full=True)
    assert (report.ok, report.proved_seq) == (True, 3)
    # A checkpoint remembered outside the store (the relay, the CLI's file) shows it.
    report = _verify(store, key, full=True, remembered=newest)
    assert (report.ok, report.bad_checkpoint) == (False, 6), report
    relay = Relay(store, StubBroker(), Policy(), checkpoint_key=key)
    relay.sealed = newest
    with capture_logs() as logs:
        assert relay.seal() is None
    assert [e["checkpoint"] for e in logs if e["event"] == "audit.chain_broken"] == [6]
    with store.read() as s:
        assert s.scalars(select(AuditCheckpoint.seq)).all() == [3]


def test_sealed_events_deleted_from_the_end_are_reported_unsealed_ones_are_not(store):
    key = _key()
    _events(store, 4)
    _seal(store, key)
    _events(store, 1)

    def truncate(to: int) -> None:
        with store.tx(audited=False) as s:
            s.execute(delete(AuditEvent).where(AuditEvent.seq > to))
            head = s.get(AuditHead, 1)
            head.seq = to
            head.hash = s.scalar(select(AuditEvent.hash).where(AuditEvent.seq == to))

    truncate(4)  # event 5 was never sealed: its loss cannot show
    assert _verify(store, key, full=True).ok
    truncate(3)
    report = _verify(store, key, full=True)
    assert (report.ok, report.bad_checkpoint, report.first_bad_seq) == (False, 4, 4)


def test_the_relay_seals_on_its_turn_and_never_over_a_broken_chain(store):
    key = _key()
    _events(store, 2)
    relay = Relay(store, StubBroker(), Policy(), checkpoint_key=key, seal_s=0.01, poll_s=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        for _ in range(500):
            if relay.sealed is not None:
                break
            stop.wait(0.01)
    finally:
        stop.set()
        thread.join()
    assert relay.sealed is not None
    assert relay.sealed.seq == 2
    assert relay.seal() is None  # nothing new
    _events(store, 2)
    # An edit after the last checkpoint: the sealer checks the chain before it seals.
    with store.tx(audited=False) as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(reason="edited"))
    with capture_logs() as logs:
        assert relay.seal() is None
    assert [e["event"] for e in logs] == ["audit.chain_broken"]
    with store.read() as s:
        assert s.scalars(select(AuditCheckpoint.seq)).all() == [2]


def test_two_relays_sealing_while_writers_append_keep_one_consistent_set(store):
    key = _key()
    relays = [Relay(store, StubBroker(), Policy(), checkpoint_key=key) for _ in range(2)]
    done = threading.Event()
    errors: list[BaseException] = []

    def sealing(relay: Relay) -> None:
        try:
            while not done.is_set():
                relay.seal()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=sealing, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    try:
        _events(store, 30)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert errors == []
    for relay in relays:
        relay.seal()
    report = _verify(store, key, full=True)
    assert (report.ok, report.proved_seq) == (True, 30), report
    assert report.checkpoints >= 2


def test_cardline_audit_verify_exits_1_naming_the_event_and_remembers_what_it_proved(
    tmp_path: Path,
):
    data = tmp_path / "d"
    runner = CliRunner()

    def cli(*args: str):
        return runner.invoke(main, [*args, "--data-dir", str(data)], catch_exceptions=False)

    assert cli("db", "upgrade").exit_code == 0
    store = open_store(sqlite_url(data))
    try:
        key = CheckpointKey.from_box(SecretBox.from_key_file(data / "master.key"))
        _events(store, 3)
        _seal(store, key)
        result = cli("audit", "verify")
        assert result.exit_code == 0, result.output
        assert "intact" in result.output
        assert Seal.from_dict(_json(data / "audit-checkpoint.json")).seq == 3
        _attack(store, 2)
        result = cli("audit", "verify", "--json")
        assert result.exit_code == 1, result.output
        report = _json_line(result.output)["audit"]
        # One checkpoint (3) places the change in events 1..3.
        assert (report["first_bad_seq"], report["bad_checkpoint"]) == (1, 3)
        status = cli("status", "--json")
        assert _json_line(status.output)["audit_chain_ok"] is False
    finally:
        store.dispose()


def _json(path: Path):
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _json_line(output: str):
    import json

    return json.loads(output.strip().splitlines()[-1])
