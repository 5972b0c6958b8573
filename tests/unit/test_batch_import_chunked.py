"""A large file is imported a chunk per transaction and the line goes on meanwhile
(issue 17 point 6): what an operator sees is the same as for a small file, and an
import that stops part-way leaves a failed batch, never a half-made one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from db.audit import verify_chain
from db.models import AuditEvent, BatchOrder, OutboxMessage
from producers import batch_import
from producers.approvals import approve_batch, reject_batch
from producers.cards import approve_card, cancel_card
from producers.pending import waiting
from producers.users import create_user
from schemas.errors import StateConflict, ValidationFailed
from schemas.policy import Policy
from tests.unit.test_batch_import import (
    cards,
    counts,
    person,
    read_rejects,
    run,
    users,
    where,
    write_csv,
)

# Every file is "large" here, and imported two rows per transaction.
CHUNKED: dict[str, Any] = {"single_tx_bytes": 0, "chunk_rows": 2}


def batches(store) -> list[BatchOrder]:
    with store.read() as s:
        return list(s.scalars(select(BatchOrder).order_by(BatchOrder.id)))


def test_a_chunked_import_gives_what_a_one_transaction_import_gives(store, tmp_path):
    rows = [person(n) for n in range(1, 8)]
    rows[2]["email"] = "not an e-mail"
    rows[5]["email"] = rows[0]["email"]
    report = run(store, write_csv(tmp_path / "users.csv", rows), **CHUNKED)

    assert (report.users_created, report.cards_requested) == (5, 5)
    assert where(report) == [(4, "email"), (7, "email")]
    assert [r["line"] for r in read_rejects(report.reject_report)] == ["4", "7"]
    (batch,) = batches(store)
    assert (batch.state, batch.card_count, batch.rejected_rows) == ("requested", 5, 2)
    assert {c.state for c in cards(store)} == {"requested"}
    with store.read() as s:
        assert verify_chain(s).ok
    assert run(store, tmp_path / "users.csv", **CHUNKED).already_imported


def test_other_writers_go_on_between_the_chunks_of_a_large_import(store, tmp_path, monkeypatch):
    # Between two chunks another writer (here: an operator creating a user) must get
    # the store at once; under one long transaction it would wait for the whole file.
    real = batch_import._Import.chunks
    finished: list[bool] = []

    def create_one(values: dict[str, str]) -> None:
        finished.append(bool(create_user(store, values, by="carol", policy=Policy())))

    def chunks_with_a_writer_between(self: Any, records: Any, **kw: Any) -> Iterator[Any]:
        for number, chunk in enumerate(real(self, records, **kw)):
            if number == 2 and self.batch_id is not None:  # writing, not checking, the file
                values = {**person(100), "email": "between@example.org"}
                values.pop("photo")
                writer = threading.Thread(target=create_one, args=(values,))
                writer.start()
                writer.join(timeout=5)
                assert finished == [True], "another writer waited for the import"
            yield chunk

    monkeypatch.setattr(batch_import._Import, "chunks", chunks_with_a_writer_between)
    rows = [person(n) for n in range(1, 9)]
    report = run(store, write_csv(tmp_path / "users.csv", rows), **CHUNKED)

    assert finished == [True]
    assert report.cards_requested == 8
    assert "between@example.org" in users(store)


def test_while_it_is_imported_a_batch_and_its_cards_cannot_be_decided(store, tmp_path, monkeypatch):
    seen: list[str] = []
    real = batch_import._Import.chunks

    def decide_between(self: Any, records: Any, **kw: Any) -> Iterator[Any]:
        for number, chunk in enumerate(real(self, records, **kw)):
            if number == 1 and self.batch_id is not None:  # the first chunk is in
                (batch,) = batches(store)
                assert batch.state == "importing"
                card = str(cards(store)[0].id)
                with pytest.raises(StateConflict) as refused:
                    approve_batch(store, batch.id, by="bob")
                seen.append(str(refused.value))
                with pytest.raises(StateConflict) as refused:
                    reject_batch(store, batch.id, by="bob", reason="no")
                seen.append(str(refused.value))
                with pytest.raises(StateConflict) as refused:
                    approve_card(store, card, by="bob")
                seen.append(str(refused.value))
                with pytest.raises(StateConflict) as refused:
                    cancel_card(store, card, by="bob")
                seen.append(str(refused.value))
                assert [w for w in waiting(store) if w.kind == "batch"] == []
            yield chunk

    monkeypatch.setattr(batch_import._Import, "chunks", decide_between)
    run(store, write_csv(tmp_path / "users.csv", [person(n) for n in range(1, 6)]), **CHUNKED)

    assert len(seen) == 4
    assert "still being imported" in seen[2]
    assert "still being imported" in seen[3]
    assert {c.state for c in cards(store)} == {"requested"}
    (batch,) = batches(store)
    assert batch.state == "requested"


def test_an_import_that_stops_part_way_leaves_a_failed_batch_and_the_file_importable(
    store, tmp_path, monkeypatch
):
    run(store, write_csv(tmp_path / "a.csv", [person(1, title="Analyst")]))
    real = batch_import._Import.import_chunk
    calls: list[int] = []

    def fail_on_third(self: Any, records: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        real(self, records)

    monkeypatch.setattr(batch_import._Import, "import_chunk", fail_on_third)
    rows = [person(1, title="Director"), *(person(n) for n in range(2, 8))]
    path = write_csv(tmp_path / "b.csv", rows)
    with pytest.raises(RuntimeError, match="power cut"):
        run(store, path, **CHUNKED)

    _, failed = batches(store)
    assert failed.state == "failed"
    assert "power cut" in (failed.reason or "")
    assert {c.state for c in cards(store) if c.batch_id == failed.id} == {"rejected"}
    # The holder's change was kept on a card that never got approved: not made.
    assert users(store)["person1@example.org"].title == "Analyst"

    monkeypatch.setattr(batch_import._Import, "import_chunk", real)
    again = run(store, path, **CHUNKED)
    assert not again.already_imported
    assert again.cards_requested == 7
    approve_batch(store, again.batch_id, by="bob")
    assert users(store)["person1@example.org"].title == "Director"
    with store.read() as s:
        assert verify_chain(s).ok


def test_a_large_file_refused_for_what_it_holds_writes_nothing(store, tmp_path):
    rows = [person(n, email="broken") if n % 2 else person(n) for n in range(1, 12)]
    path = write_csv(tmp_path / "users.csv", rows)
    before = counts(store)
    with pytest.raises(ValidationFailed, match="more than 3 rows are rejected"):
        run(store, path, max_rejects=3, **CHUNKED)
    with pytest.raises(ValidationFailed, match="more than 5 rows"):
        run(store, path, max_rows=5, **CHUNKED)
    assert counts(store) == before
    assert not (tmp_path / "rejects").exists()


def test_without_an_approval_step_a_chunked_batch_is_approved_when_it_is_all_in(store, tmp_path):
    lax = Policy(approval_required=False)
    run(store, write_csv(tmp_path / "a.csv", [person(1, title="Analyst")]), lax)
    rows = [person(1, title="Director"), *(person(n) for n in range(2, 6))]
    report = run(store, write_csv(tmp_path / "b.csv", rows), lax, **CHUNKED)

    batch = batches(store)[-1]
    assert (batch.state, batch.approved_by) == ("approved", "auto")
    assert {c.state for c in cards(store) if c.batch_id == report.batch_id} == {"approved"}
    assert users(store)["person1@example.org"].title == "Director"
    with store.read() as s:
        queued = {
            m.payload["credential_id"]
            for m in s.scalars(select(OutboxMessage))
            if m.payload.get("type") == "prepare_card"
        }
    assert {c.id for c in cards(store) if c.batch_id == report.batch_id} <= queued


def test_a_big_batch_is_approved_a_chunk_at_a_time_with_every_card_queued(store, tmp_path):
    report = run(store, write_csv(tmp_path / "users.csv", [person(n) for n in range(1, 2500)]))
    result = approve_batch(store, report.batch_id, by="bob")

    assert result.approved == 2499
    assert {c.state for c in cards(store)} == {"approved"}
    with store.read() as s:
        prepares = sum(
            1 for m in s.scalars(select(OutboxMessage)) if m.payload.get("type") == "prepare_card"
        )
        assert prepares == 2499
        assert verify_chain(s).ok


def test_a_rejected_batch_gives_every_card_its_reason(store, tmp_path):
    report = run(store, write_csv(tmp_path / "users.csv", [person(n) for n in range(1, 1500)]))
    reject_batch(store, report.batch_id, by="bob", reason="wrong cost centre")

    with store.read() as s:
        reasons = set(
            s.scalars(
                select(AuditEvent.reason).where(
                    AuditEvent.entity == "card", AuditEvent.action == "reject"
                )
            )
        )
        actors = set(
            s.scalars(
                select(AuditEvent.actor).where(
                    AuditEvent.entity == "card", AuditEvent.action == "reject"
                )
            )
        )
    assert reasons == {"wrong cost centre"}
    assert actors == {"bob"}
    assert {c.state for c in cards(store)} == {"rejected"}


# --- following batches: list and show (issue 14 point 3, CLI and API) --------------


def test_batch_list_and_show_count_each_batchs_cards_by_state(store, tmp_path):
    from producers.batches import get_batch, list_batches

    first = run(store, write_csv(tmp_path / "a.csv", [person(n) for n in range(1, 4)]))
    rows = [person(n) for n in range(4, 7)] + [person(9, email="broken")]
    second = run(store, write_csv(tmp_path / "b.csv", rows))
    reject_batch(store, first.batch_id, by="bob", reason="wrong cost centre")

    listed = list_batches(store)
    assert [b.id for b in listed.items] == [second.batch_id, first.batch_id]  # newest first
    assert listed.total == 2
    shown = get_batch(store, first.batch_id)
    assert (shown.state, shown.reason, shown.cards) == (
        "rejected",
        "wrong cost centre",
        {"rejected": 3},
    )
    other = get_batch(store, second.batch_id)
    assert (other.cards, other.rejected_rows, other.requested_by) == ({"requested": 3}, 1, "alice")
    assert [b.id for b in list_batches(store, state="rejected").items] == [first.batch_id]
    with pytest.raises(ValidationFailed, match="one of"):
        list_batches(store, state="nonsense")
