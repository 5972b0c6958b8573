"""CSV batch intake: what an operator sees after importing a file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from structlog.testing import capture_logs

from db.models import AuditEvent, BatchOrder, Credential, OutboxMessage, User
from db.transition import transition
from producers import batch_import
from producers.approvals import approve_batch, reject_batch
from producers.batch_import import ImportReport, import_batch
from producers.generate import write_users_csv
from schemas.batch import COLUMNS, BatchRow
from schemas.errors import ValidationFailed
from schemas.policy import Policy

EXAMPLE = Path(__file__).resolve().parents[2] / "ops" / "examples" / "users.csv"
TABLES = {
    "users": User,
    "credentials": Credential,
    "batch_orders": BatchOrder,
    "audit_events": AuditEvent,
    "outbox": OutboxMessage,
}


def person(n: int, **overrides: str) -> dict[str, str]:
    row = {
        "first_name": "Zoë",
        "last_name": f"Person{n}",
        "email": f"person{n}@example.org",
        "upn": f"person{n}@corp.example.org",
        "organization": "Cardline Demo Ltd",
        "org_unit": "Engineering",
        "title": "Engineer",
        "country": "GB",
        "username": f"person{n}",
        "identifier": f"{n:06d}",
        "external_id": f"EMP-{n}",
        "photo": "",
    }
    row.update(overrides)
    return row


def write_csv(
    path: Path,
    rows: list[dict[str, str]],
    *,
    columns: tuple[str, ...] = COLUMNS,
    bom: bool = False,
) -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(column, "") for column in columns])
    return path


def run(store, path: Path, policy: Policy | None = None, **kwargs) -> ImportReport:
    return import_batch(
        store,
        path,
        policy=policy or Policy(),
        requested_by="alice",
        reject_dir=path.parent / "rejects",
        **kwargs,
    )


def counts(store) -> dict[str, int]:
    with store.tx() as session:
        return {
            name: session.scalar(select(func.count()).select_from(model)) or 0
            for name, model in TABLES.items()
        }


def users(store) -> dict[str, User]:
    with store.tx() as session:
        return {u.email: u for u in session.scalars(select(User))}


def cards(store) -> list[Credential]:
    with store.tx() as session:
        return list(session.scalars(select(Credential).order_by(Credential.id)))


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.DictReader(fh))


def where(report: ImportReport) -> list[tuple[int, str | None]]:
    return [(r.line, r.field) for r in report.rejected]


# --- the file as a whole ----------------------------------------------------------------


@pytest.mark.parametrize("bom", [True, False], ids=["with-bom", "without-bom"])
def test_utf8_file_imports_with_or_without_bom(store, tmp_path, bom):
    path = write_csv(tmp_path / "users.csv", [person(1), person(2, first_name="Łukasz")], bom=bom)

    report = run(store, path)

    assert (report.users_created, report.cards_requested, report.rejected) == (2, 2, ())
    assert {u.first_name for u in users(store).values()} == {"Zoë", "Łukasz"}


def test_missing_required_column_is_refused_and_nothing_is_written(store, tmp_path):
    columns = tuple(c for c in COLUMNS if c != "email")
    path = write_csv(tmp_path / "users.csv", [person(1)], columns=columns)

    with pytest.raises(ValidationFailed) as caught:
        run(store, path)

    assert (caught.value.field, caught.value.line) == ("email", 1)
    assert "email" in str(caught.value)
    assert counts(store) == dict.fromkeys(TABLES, 0)
    assert not (tmp_path / "rejects").exists()


def test_unknown_column_is_refused(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1)], columns=(*COLUMNS, "shoe_size"))

    with pytest.raises(ValidationFailed) as caught:
        run(store, path)

    assert (caught.value.field, caught.value.line) == ("shoe_size", 1)
    assert counts(store)["users"] == 0


def test_header_names_are_matched_without_case_or_spaces(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1)], columns=COLUMNS)
    text = path.read_text(encoding="utf-8").replace("first_name,", " First_Name ,", 1)
    path.write_text(text, encoding="utf-8")

    assert run(store, path).cards_requested == 1


def test_bytes_that_are_not_utf8_are_refused_with_their_line(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1), person(2, last_name="MÜLLER")])
    path.write_bytes(path.read_bytes().replace("MÜLLER".encode(), "MÜLLER".encode("latin-1")))

    with pytest.raises(ValidationFailed) as caught:
        run(store, path)

    assert caught.value.line == 3
    assert counts(store)["users"] == 0


def test_empty_file_is_refused(store, tmp_path):
    path = tmp_path / "users.csv"
    path.write_bytes(b"")

    with pytest.raises(ValidationFailed, match="header"):
        run(store, path)


def test_unknown_production_line_name_is_refused_before_reading(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1)])

    with pytest.raises(ValidationFailed) as caught:
        run(store, path, line="Line One!")

    assert caught.value.field == "line"


# --- rows -------------------------------------------------------------------------------


def test_good_rows_are_imported_and_bad_rows_rejected_with_line_field_and_reason(store, tmp_path):
    rows = [
        person(1),  # line 2
        person(2, email="not-an-email"),  # line 3
        person(3),  # line 4
        person(4, last_name="   "),  # line 5
        person(5, country="GBR"),  # line 6
        person(6, upn="no-at-sign"),  # line 7
        person(7),  # line 8
    ]
    path = write_csv(tmp_path / "staff.csv", rows)

    report = run(store, path)

    assert where(report) == [(3, "email"), (5, "last_name"), (6, "country"), (7, "upn")]
    assert report.rejected[1].reason == "is required"
    assert report.cards_requested == 3
    assert sorted(users(store)) == [
        "person1@example.org",
        "person3@example.org",
        "person7@example.org",
    ]
    with store.tx() as session:
        batch = session.get(BatchOrder, report.batch_id)
        assert batch is not None
        assert (batch.name, batch.card_count, batch.rejected_rows) == ("staff.csv", 3, 4)

    reject_report = tmp_path / "rejects" / "staff-rejects.csv"
    assert report.reject_report == reject_report
    rejects = read_rejects(reject_report)
    assert list(rejects[0]) == ["line", "field", "reason", *COLUMNS]
    assert [(r["line"], r["field"]) for r in rejects] == [
        ("3", "email"),
        ("5", "last_name"),
        ("6", "country"),
        ("7", "upn"),
    ]
    assert rejects[0]["email"] == "not-an-email"
    assert rejects[2]["last_name"] == "Person5"


def test_quoted_multi_line_field_keeps_later_line_numbers_right(store, tmp_path):
    header = ",".join(COLUMNS)
    good = "Ana,Lima,ana@example.org,ana@example.org,Demo,Ops,,,,,,"
    text = "\n".join(
        [
            header,  # line 1
            good,  # line 2
            'Zoë,Smith,zoe@example.org,zoe@example.org,Demo,"Research',  # line 3
            'and Development",Chief Scientist,GB,,,,',  # line 4: same row
            'José,"Pérez, Jr.",jose@example.org,jose@example.org,Demo,Ops,,es,,,,',  # line 5
            "Bad,Row,bad-email,bad@example.org,Demo,Ops,,,,,,",  # line 6
        ]
    )
    path = tmp_path / "multi.csv"
    path.write_text(text + "\n", encoding="utf-8")

    report = run(store, path)

    assert where(report) == [(3, "org_unit"), (6, "email")]
    assert "line break" in report.rejected[0].reason
    assert users(store)["jose@example.org"].last_name == "Pérez, Jr."
    assert users(store)["jose@example.org"].country == "ES"


def test_row_with_wrong_number_of_cells_is_rejected(store, tmp_path):
    path = tmp_path / "users.csv"
    header = ",".join(COLUMNS)
    path.write_text(f"{header}\nA,B,a@example.org,a@example.org,O,U\n", encoding="utf-8")

    report = run(store, path)

    assert where(report) == [(2, None)]
    assert "6 cells" in report.rejected[0].reason


def test_blank_lines_are_skipped_but_still_counted(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1)])
    bad = ",".join(person(2, email="nope").values())
    path.write_text(path.read_text(encoding="utf-8") + "\n,,,,,,,,,,,\n" + bad + "\n")

    report = run(store, path)

    assert where(report) == [(5, "email")]


def test_same_email_twice_in_file_rejects_the_second_naming_the_first_line(store, tmp_path):
    rows = [person(1), person(2), person(3, email="PERSON1@example.org")]
    path = write_csv(tmp_path / "users.csv", rows)

    report = run(store, path)

    assert where(report) == [(4, "email")]
    assert "line 2" in report.rejected[0].reason
    assert report.cards_requested == 2


def test_same_external_id_twice_in_file_rejects_the_second(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1), person(2, external_id="EMP-1")])

    report = run(store, path)

    assert where(report) == [(3, "external_id")]
    assert "line 2" in report.rejected[0].reason


def test_zero_valid_rows_creates_no_batch_but_writes_the_reject_report(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1, email="x"), person(2, email="y")])

    report = run(store, path)

    assert report.batch_id is None
    assert report.cards_requested == 0
    assert report.reject_report is not None
    assert len(read_rejects(report.reject_report)) == 2
    assert counts(store) == dict.fromkeys(TABLES, 0)


def test_clean_file_writes_no_reject_report(store, tmp_path):
    report = run(store, write_csv(tmp_path / "users.csv", [person(1)]))

    assert report.reject_report is None
    assert not (tmp_path / "rejects").exists()


# --- identity: the same file, the same people -------------------------------------------


def test_reimporting_the_same_file_creates_nothing(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1), person(2), person(3, email="bad")])
    first = run(store, path)
    before = counts(store)

    again = run(store, path)

    assert again.already_imported
    assert again.batch_id == first.batch_id
    assert (again.users_created, again.cards_requested, again.rejected) == (0, 0, ())
    assert counts(store) == before


def test_existing_user_matched_by_email_is_updated_not_duplicated(store, tmp_path):
    run(store, write_csv(tmp_path / "a.csv", [person(1, title="Analyst")]))

    changed = person(1, title="Director", external_id="", country="")
    report = run(store, write_csv(tmp_path / "b.csv", [changed]))

    assert (report.users_created, report.users_updated, report.cards_requested) == (0, 1, 1)
    assert users(store)["person1@example.org"].title == "Analyst"  # until approved
    approve_batch(store, report.batch_id, by="bob")
    user = users(store)["person1@example.org"]
    assert user.title == "Director"
    assert user.external_id == "EMP-1"  # an empty cell keeps what the user has
    assert user.country == "GB"
    assert len(cards(store)) == 2
    with store.tx() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.entity == "user", AuditEvent.entity_id == str(user.id)
            )
        ).all()
    assert actions == ["create", "update"]


def test_existing_user_matched_by_external_id_gets_the_new_email(store, tmp_path):
    run(store, write_csv(tmp_path / "a.csv", [person(1)]))

    moved = person(1, email="new.address@example.org")
    report = run(store, write_csv(tmp_path / "b.csv", [moved]))

    assert (report.users_created, report.users_updated) == (0, 1)
    approve_batch(store, report.batch_id, by="bob")
    assert list(users(store)) == ["new.address@example.org"]


def test_a_batch_changes_an_existing_holder_only_when_approved_and_never_on_reject(store, tmp_path):
    run(store, write_csv(tmp_path / "a.csv", [person(1, title="Analyst")]))
    changed = run(store, write_csv(tmp_path / "b.csv", [person(1, title="Director")]))
    assert users(store)["person1@example.org"].title == "Analyst"
    reject_batch(store, changed.batch_id, by="bob", reason="not ours to change")
    assert users(store)["person1@example.org"].title == "Analyst"
    again = run(store, write_csv(tmp_path / "c.csv", [person(1, title="Chief")]))
    approve_batch(store, again.batch_id, by="bob")
    assert users(store)["person1@example.org"].title == "Chief"


def test_without_an_approval_step_an_import_changes_the_holder_at_once(store, tmp_path):
    lax = Policy(approval_required=False)
    run(store, write_csv(tmp_path / "a.csv", [person(1, title="Analyst")]), lax)
    run(store, write_csv(tmp_path / "b.csv", [person(1, title="Director")]), lax)
    assert users(store)["person1@example.org"].title == "Director"


def test_a_upn_another_holder_has_is_refused_in_the_file_and_against_the_store(store, tmp_path):
    run(store, write_csv(tmp_path / "a.csv", [person(1)]))
    taken = person(2, upn="PERSON1@corp.example.org")  # another holder's, in other case
    twice = [person(3, upn="same@corp.example.org"), person(4, upn="Same@corp.example.org")]
    report = run(store, write_csv(tmp_path / "b.csv", [taken, *twice]))
    assert where(report) == [(2, "upn"), (4, "upn")]
    assert "person2@example.org" not in users(store)


def test_unchanged_existing_user_gets_a_card_without_an_update_event(store, tmp_path):
    run(store, write_csv(tmp_path / "a.csv", [person(1)]))
    events = counts(store)["audit_events"]

    report = run(store, write_csv(tmp_path / "b.csv", [person(1)], bom=True))

    assert (report.users_updated, report.cards_requested) == (0, 1)
    # One event for the new batch and one for the new card; none for the user.
    assert counts(store)["audit_events"] == events + 2


def test_email_of_one_user_and_external_id_of_another_is_a_conflict(store, tmp_path):
    run(store, write_csv(tmp_path / "a.csv", [person(1), person(2)]))

    mixed = person(1, external_id="EMP-2")
    report = run(store, write_csv(tmp_path / "b.csv", [mixed]))

    assert where(report) == [(2, "external_id")]
    assert report.batch_id is None
    assert len(cards(store)) == 2


def test_locked_user_gets_no_card(store, tmp_path):
    run(store, write_csv(tmp_path / "a.csv", [person(1)]))
    with store.tx() as session:
        user = session.scalars(select(User)).one()
        transition(session, user, "lock", actor="security")

    report = run(store, write_csv(tmp_path / "b.csv", [person(1), person(2)]))

    assert where(report) == [(2, "email")]
    assert "locked" in report.rejected[0].reason
    assert report.cards_requested == 1


def test_card_beyond_the_policy_limit_is_rejected(store, tmp_path):
    policy = Policy(cards_per_user=1)
    run(store, write_csv(tmp_path / "a.csv", [person(1)]), policy)

    report = run(store, write_csv(tmp_path / "b.csv", [person(1), person(2)]), policy)

    assert where(report) == [(2, None)]
    assert "1 live card" in report.rejected[0].reason
    assert report.cards_requested == 1


def test_cards_no_longer_live_do_not_count_against_the_limit(store, tmp_path):
    policy = Policy(cards_per_user=1)
    run(store, write_csv(tmp_path / "a.csv", [person(1)]), policy)
    with store.tx() as session:
        card = session.scalars(select(Credential)).one()
        transition(session, card, "cancel", actor="alice")

    report = run(store, write_csv(tmp_path / "b.csv", [person(1)], bom=True), policy)

    assert (report.cards_requested, report.rejected) == (1, ())


# --- photos -----------------------------------------------------------------------------


def test_photo_is_found_next_to_the_csv_and_stored_with_its_full_path(store, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "p1.jpg").write_bytes(b"\xff\xd8\xff")
    rows = [
        person(1, photo="photos/p1.jpg"),
        person(2, photo="photos/missing.jpg"),
        person(3, photo="../outside.jpg"),
    ]
    (tmp_path.parent / "outside.jpg").write_bytes(b"\xff\xd8\xff")

    report = run(store, write_csv(tmp_path / "users.csv", rows))

    assert where(report) == [(3, "photo"), (4, "photo")]
    assert "not found" in report.rejected[0].reason
    photo_path = users(store)["person1@example.org"].photo_path
    assert photo_path == str((tmp_path / "photos" / "p1.jpg").resolve())


# --- approval policy, transactions, volume ----------------------------------------------


def test_without_approval_step_cards_are_approved_and_queued_for_preparation(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1), person(2), person(3)])

    report = run(store, path, Policy(approval_required=False, default_line="north"))

    issued = cards(store)
    assert {(c.state, c.line, c.requested_by) for c in issued} == {("approved", "north", "alice")}
    with store.tx() as session:
        batch = session.get(BatchOrder, report.batch_id)
        assert batch is not None
        assert (batch.state, batch.approved_by) == ("approved", "auto")
        queued = session.scalars(select(OutboxMessage)).all()
    assert sorted(m.payload["credential_id"] for m in queued) == [c.id for c in issued]
    assert {(m.queue, m.actor) for m in queued} == {("prepare", "prepare")}


def test_with_approval_step_cards_wait_and_nothing_is_queued(store, tmp_path):
    report = run(store, write_csv(tmp_path / "users.csv", [person(1)]), line="south")

    assert [(c.state, c.line, c.batch_id) for c in cards(store)] == [
        ("requested", "south", report.batch_id)
    ]
    assert counts(store)["outbox"] == 0


def test_failure_half_way_leaves_nothing_behind(store, tmp_path, monkeypatch):
    real = batch_import._Import._request_card
    calls = []

    def fail_on_third(self, user, reason, changes):
        calls.append(user)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        real(self, user, reason, changes)

    monkeypatch.setattr(batch_import._Import, "_request_card", fail_on_third)
    path = write_csv(tmp_path / "users.csv", [person(n) for n in range(1, 6)])

    with pytest.raises(RuntimeError):
        run(store, path)

    assert counts(store) == dict.fromkeys(TABLES, 0)


def test_generated_5000_row_file_imports_completely(store, tmp_path):
    path = write_users_csv(tmp_path / "big.csv", 5000, seed=7)

    report = run(store, path)

    assert report.rejected == ()
    assert (report.users_created, report.cards_requested) == (5000, 5000)
    assert counts(store) == {
        "users": 5000,
        "credentials": 5000,
        "batch_orders": 1,
        "audit_events": 10_001,
        "outbox": 0,
    }


def test_generated_file_is_the_same_for_the_same_seed(tmp_path):
    a = write_users_csv(tmp_path / "a.csv", 50, seed=3).read_bytes()
    b = write_users_csv(tmp_path / "b.csv", 50, seed=3).read_bytes()
    c = write_users_csv(tmp_path / "c.csv", 50, seed=4).read_bytes()

    assert a == b
    assert a != c


def test_bundled_example_file_imports_cleanly(store, tmp_path):
    path = tmp_path / "users.csv"
    path.write_bytes(EXAMPLE.read_bytes())

    report = run(store, path)

    assert report.rejected == ()
    assert report.cards_requested == 12


def test_log_events_carry_no_personal_data(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(1), person(2, email="bad")])

    with capture_logs() as events:
        run(store, path)

    text = repr(events)
    assert events
    assert "person1" not in text
    assert "Zoë" not in text


# --- one row ----------------------------------------------------------------------------


def test_row_is_normalised():
    row = BatchRow.model_validate(
        person(1, first_name="  Zoë ", email=" Zoe.Smith@Example.ORG", country="gb", title="")
    )

    assert (row.first_name, row.email, row.country, row.title) == (
        "Zoë",
        "zoe.smith@example.org",
        "GB",
        None,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("first_name", "x" * 101),
        ("email", "a@b"),
        ("email", "two@@example.org"),
        ("email", "x" * 65 + "@example.org"),
        ("upn", "name@"),
        ("country", "G1"),
        ("external_id", "x" * 129),
    ],
)
def test_row_value_out_of_bounds_is_refused(field, value):
    with pytest.raises(ValidationError) as caught:
        BatchRow.model_validate(person(1, **{field: value}))

    assert caught.value.errors()[0]["loc"] == (field,)


def test_a_shared_email_needs_the_external_id_to_say_which_user_a_row_means(store, tmp_path):
    from producers.users import create_user

    lax = Policy(email_unique=False)
    for n in (1, 2):
        values = {k: v or None for k, v in person(n, email="shared@example.org").items()}
        create_user(store, {k: v for k, v in values.items() if k != "photo"}, by="r", policy=lax)
    vague = write_csv(tmp_path / "a.csv", [person(3, email="shared@example.org", external_id="")])
    refused = run(store, vague, lax)
    assert where(refused) == [(2, "email")]
    assert "external_id" in refused.rejected[0].reason
    named = write_csv(
        tmp_path / "b.csv", [person(4, email="shared@example.org", external_id="EMP-2")]
    )
    report = run(store, named, lax)
    assert not report.rejected
    assert report.cards_requested == 1
    with store.read() as s:
        card = s.scalars(select(Credential)).one()
        owner = s.get(User, card.user_id)
        assert owner is not None
        assert owner.external_id == "EMP-2"


# --- scale: streaming, caps, bulk writes (issue 16 point 1, issue 17 point 6) ----------


def test_failure_after_a_chunk_was_written_leaves_nothing_behind(store, tmp_path, monkeypatch):
    # Small chunks, so the first ones are inserted (with their audit events) before
    # the failure: the one transaction still takes them all back.
    monkeypatch.setattr(batch_import, "_CHUNK", 2)
    real = batch_import._Import._flush
    flushes = []

    def fail_on_third(self):
        flushes.append(1)
        if len(flushes) == 3:
            raise RuntimeError("power cut")
        real(self)

    monkeypatch.setattr(batch_import._Import, "_flush", fail_on_third)
    path = write_csv(tmp_path / "users.csv", [person(n) for n in range(1, 8)])

    with pytest.raises(RuntimeError):
        run(store, path)

    assert len(flushes) == 3
    assert counts(store) == dict.fromkeys(TABLES, 0)


def test_the_audit_chain_verifies_after_a_bulk_import_in_chunks(store, tmp_path, monkeypatch):
    from db.audit import verify_chain

    monkeypatch.setattr(batch_import, "_CHUNK", 3)
    lax = Policy(approval_required=False)
    run(store, write_csv(tmp_path / "a.csv", [person(1, title="Analyst")]), lax)
    rows = [person(1, title="Director"), *(person(n) for n in range(2, 9))]
    report = run(store, write_csv(tmp_path / "b.csv", rows), lax)

    assert (report.users_created, report.users_updated, report.cards_requested) == (7, 1, 8)
    with store.read() as s:
        chain = verify_chain(s)
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        queued = s.scalars(select(OutboxMessage)).all()
        card_ids = s.scalars(select(Credential.id).order_by(Credential.id)).all()
    assert chain.ok
    assert chain.events == 1 + 2 + 1 + 7 + 8 + 1  # first import; batch, users, cards, update
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    created = [e for e in events if e.action == "create" and e.entity in ("user", "card")]
    assert {(e.actor, e.from_state) for e in created} == {("alice", None)}
    assert {e.to_state for e in created if e.entity == "card"} == {"approved"}
    assert sorted(m.payload["credential_id"] for m in queued) == card_ids
    (update,) = [e for e in events if e.action == "update"]
    assert update.reason.endswith("line 2: changed title")


def test_bulk_created_rows_get_the_events_create_would_give_them(store, tmp_path):
    report = run(store, write_csv(tmp_path / "users.csv", [person(1), person(2)]))
    with store.read() as s:
        card = s.scalars(select(Credential).order_by(Credential.id)).first()
        user = s.get(User, card.user_id)
        events = {(e.entity, e.entity_id): e for e in s.scalars(select(AuditEvent))}
    assert (card.version, user.version, user.state, card.state) == (1, 1, "active", "requested")
    assert events[("card", str(card.id))].reason == f"batch {report.batch_id} line 2"
    assert events[("user", str(user.id))].reason == f"batch {report.batch_id} line 2"


def test_a_file_of_more_rows_than_the_cap_is_refused_whole(store, tmp_path):
    path = write_csv(tmp_path / "users.csv", [person(n) for n in range(1, 5)])

    with pytest.raises(ValidationFailed, match="more than 3 rows") as caught:
        run(store, path, max_rows=3)

    assert caught.value.line == 5
    assert counts(store) == dict.fromkeys(TABLES, 0)
    assert run(store, path, max_rows=4).cards_requested == 4


def test_a_file_with_more_rejects_than_the_cap_is_refused_whole(store, tmp_path):
    rows = [person(1), *(person(n, email=f"bad{n}") for n in range(2, 6))]
    path = write_csv(tmp_path / "users.csv", rows)

    with pytest.raises(ValidationFailed, match="more than 3 rows are rejected"):
        run(store, path, max_rejects=3)

    assert counts(store) == dict.fromkeys(TABLES, 0)
    assert not list((tmp_path / "rejects").glob("*.csv"))
    report = run(store, path, max_rejects=4)
    assert (report.cards_requested, len(report.rejected)) == (1, 4)
    assert len(read_rejects(report.reject_report)) == 4


def test_an_unknown_column_is_imported_only_when_named_to_ignore(store, tmp_path):
    columns = (*COLUMNS[:3], "HR_Grade", *COLUMNS[3:], "cost_centre")
    rows = [person(1, HR_Grade="7", cost_centre="X1"), person(2, email="bad")]
    path = write_csv(tmp_path / "users.csv", rows, columns=columns)

    with pytest.raises(ValidationFailed) as caught:
        run(store, path, ignore_columns=["hr_grade"])
    assert caught.value.field == "cost_centre"
    assert counts(store)["users"] == 0

    report = run(store, path, ignore_columns=[" HR_GRADE ", "cost_centre"])
    assert report.cards_requested == 1
    assert users(store)["person1@example.org"].title == "Engineer"
    (reject,) = read_rejects(report.reject_report)  # the report shows the file as it was
    assert (reject["HR_Grade"], reject["cost_centre"], reject["email"]) == ("", "", "bad")


@pytest.mark.parametrize("name", ["email", "", "x" * 101])
def test_a_column_of_ours_or_no_name_cannot_be_ignored(store, tmp_path, name):
    path = write_csv(tmp_path / "users.csv", [person(1)])
    with pytest.raises(ValidationFailed) as caught:
        run(store, path, ignore_columns=[name])
    assert caught.value.field == "ignore_column"


def test_a_reimport_is_answered_from_the_digest_without_reading_rows(store, tmp_path, monkeypatch):
    path = write_csv(tmp_path / "users.csv", [person(1)])
    first = run(store, path)

    def no_reading(*args, **kwargs):
        raise AssertionError("the rows were read again")

    monkeypatch.setattr(batch_import, "open_sheet", no_reading)
    again = run(store, path)
    assert (again.already_imported, again.batch_id) == (True, first.batch_id)


def test_a_bad_byte_far_into_a_file_is_refused_with_its_line(store, tmp_path):
    rows = [person(n) for n in range(1, 3001)]  # past the first chunk read
    path = write_csv(tmp_path / "users.csv", rows)
    data = path.read_bytes().replace(b"Person2999,", b"Person\xff2999,")
    path.write_bytes(data)

    with pytest.raises(ValidationFailed, match="0xff") as caught:
        run(store, path)

    assert caught.value.line == 3000
    assert counts(store)["users"] == 0


def test_a_busy_store_is_a_transient_error_and_nothing_is_written(sqlite_store, tmp_path):
    import sqlite3

    from sqlalchemy import event

    from schemas.errors import TransientError

    @event.listens_for(sqlite_store.engine, "connect")
    def _short_wait(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA busy_timeout = 50")

    sqlite_store.engine.dispose()  # connections made from now on wait only 50 ms
    holder = sqlite3.connect(sqlite_store.engine.url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(batch_import.StoreBusy) as caught:
            run(sqlite_store, write_csv(tmp_path / "users.csv", [person(1)]))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert isinstance(caught.value, TransientError)
    assert caught.value.retry_after_s > 0
    assert counts(sqlite_store)["users"] == 0


# --- POST /batches ----------------------------------------------------------------------


def _csv_bytes(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> bytes:
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(column, "") for column in columns])
    return out.getvalue().encode()


@pytest.fixture
def api(store, tmp_path):
    from tests.unit.test_api import _app, _auth

    return _app(store, tmp_path), _auth(store, "rita", "requester")


def _post(client, headers, data, **params):
    return client.post(
        "/batches", content=data, params=params, headers={**headers, "Content-Type": "text/csv"}
    )


def test_an_upload_is_streamed_in_chunks_and_imported(store, api):
    client, headers = api
    data = _csv_bytes([person(n) for n in range(1, 200)])

    def pieces():  # no Content-Length: the body arrives in chunks
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]

    response = _post(client, headers, pieces())

    assert response.status_code == 201, response.text
    assert response.json()["cards_requested"] == 199


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_past_the_size_cap_is_refused_413_and_nothing_written(
    store, api, monkeypatch, chunked
):
    from producers.api import routes_batches

    client, headers = api
    data = _csv_bytes([person(n) for n in range(1, 50)])
    monkeypatch.setattr(routes_batches, "MAX_CSV", len(data) - 1)
    body = iter([data[:1000], data[1000:]]) if chunked else data

    response = _post(client, headers, body)

    assert response.status_code == 413, response.text
    assert response.json()["error"]["field"] == "csv"
    assert counts(store)["users"] == 0
    monkeypatch.setattr(routes_batches, "MAX_CSV", len(data))
    assert _post(client, headers, data).status_code == 201


def test_the_api_ignores_only_the_columns_it_is_told_to(store, api):
    client, headers = api
    data = _csv_bytes([person(1, grade="7")], columns=(*COLUMNS, "grade"))

    refused = _post(client, headers, data)
    assert refused.status_code == 422
    assert refused.json()["error"]["field"] == "grade"
    assert "grade" in refused.json()["error"]["message"]

    accepted = _post(client, headers, data, ignore_column=["grade", "other"])
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["cards_requested"] == 1


def test_the_api_answers_503_with_retry_after_when_the_store_is_busy(sqlite_store, tmp_path):
    import sqlite3

    from sqlalchemy import event

    from tests.unit.test_api import _app, _auth

    client, headers = _app(sqlite_store, tmp_path), _auth(sqlite_store, "rita", "requester")

    @event.listens_for(sqlite_store.engine, "connect")
    def _short_wait(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA busy_timeout = 50")

    sqlite_store.engine.dispose()
    holder = sqlite3.connect(sqlite_store.engine.url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        response = _post(client, headers, _csv_bytes([person(1)]))
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "unavailable"
    assert counts(sqlite_store)["users"] == 0
    assert _post(client, headers, _csv_bytes([person(1)])).status_code == 201


def test_a_reject_report_never_hands_a_spreadsheet_a_formula_and_the_store_keeps_the_value(
    store, tmp_path
):
    formulas = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]
    rows = [
        person(1, first_name=formulas[0], email="bad"),  # rejected: echoed in the report
        person(2, org_unit='=HYPERLINK("http://x")'),  # imported as it came
        *(person(n + 3, title=f, email="also-bad") for n, f in enumerate(formulas[1:])),
    ]
    path = write_csv(tmp_path / "evil.csv", rows)

    report = run(store, path)

    assert report.cards_requested == 1
    rejects = read_rejects(report.reject_report)
    assert rejects[0]["first_name"] == "'" + formulas[0]
    assert [r["title"] for r in rejects[1:]] == ["'" + f for f in formulas[1:]]
    for row in rejects:
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert users(store)["person2@example.org"].org_unit == '=HYPERLINK("http://x")'
