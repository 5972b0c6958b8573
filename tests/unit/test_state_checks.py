"""The database enforces what the state tables say: a CHECK on every state column,
generated from schemas.states, and one live production attempt per card and per
station. Checked on SQLite and PostgreSQL, with rows the code would never write."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import inspect, text, update
from sqlalchemy.exc import IntegrityError

from db.engine import open_store
from db.models import Base, ProductionAttempt, Stateful, utcnow
from db.transition import create
from schemas.errors import StateConflict
from schemas.states import MACHINES
from tests import factories

# The states each table's CHECK allows, as migration 0009 (0012 for approval requests,
# 0019 for batches, 0017 for card updates) wrote them. A machine that
# gains a state fails this test: add a migration that re-creates that table's CHECK
# (the stores already migrated would refuse the new state), then update this table.
STATES_AT_0009 = {
    "users": "active deleted inactive locked",
    "batch_orders": "approved cancelled failed importing rejected requested",
    "credentials": "active approved assigned at_bureau cancelled expired failed inactive issued "
    "locked producing ready rejected requested unassigned",
    "production_attempts": "in_progress spoiled succeeded",
    "certificates": "expired hold revoked valid",
    "soft_tokens": "approved cancelled issued rejected requested revoked",
    "incidents": "cancelled closed open",
    "approval_requests": "approved cancelled failed pending rejected",
    "card_updates": "applied cancelled failed in_progress pending",
    "bureau_lines": "ordered produced rejected",
}
STATEFUL_TABLES = sorted(
    m.local_table.name for m in Base.registry.mappers if issubclass(m.class_, Stateful)
)


def test_every_stateful_table_has_a_state_check_for_the_states_it_was_migrated_with():
    assert sorted(STATES_AT_0009) == STATEFUL_TABLES
    for table in Base.metadata.sorted_tables:
        if table.name in STATES_AT_0009:
            (check,) = [c for c in table.constraints if c.name == f"ck_{table.name}_state"]
            for state in STATES_AT_0009[table.name].split():
                assert f"'{state}'" in str(check.sqltext), (table.name, state)
    machine_states = {m.name: sorted(m.states) for m in MACHINES.values()}
    assert machine_states["card"] + machine_states["temp_card"]  # both feed credentials
    union = sorted(set(machine_states["card"]) | set(machine_states["temp_card"]))
    assert union == STATES_AT_0009["credentials"].split()
    for table, machine in [
        ("users", "user"),
        ("batch_orders", "batch"),
        ("production_attempts", "attempt"),
        ("certificates", "certificate"),
        ("soft_tokens", "soft_token"),
        ("incidents", "incident"),
        ("approval_requests", "approval_request"),
        ("card_updates", "card_update"),
        ("bureau_lines", "bureau_line"),
    ]:
        assert machine_states[machine] == STATES_AT_0009[table].split(), table


def test_the_migrated_database_has_every_state_check(database_url):
    store = open_store(database_url, pool_size=1)
    with store.engine.connect() as conn:
        inspector = inspect(conn)
        for table in STATEFUL_TABLES:
            names = {c["name"] for c in inspector.get_check_constraints(table)}
            assert f"ck_{table}_state" in names, table
        indexes = {i["name"]: i for i in inspector.get_indexes("production_attempts")}
        assert indexes["uq_live_attempt_per_station"]["unique"]
        assert indexes["uq_live_attempt_per_station"]["column_names"] == ["station_id"]
    store.dispose()


ENTITIES = sorted(MACHINES)


@pytest.mark.parametrize("machine", ENTITIES)
def test_a_row_in_a_state_outside_its_machine_is_refused_by_the_database(store, machine):
    with pytest.raises(IntegrityError, match=r"ck_[a-z_]+_state"), store.tx() as s:
        factories.entity(s, machine, "nonsense")


@pytest.mark.parametrize("machine", ENTITIES)
def test_an_update_to_a_state_outside_its_machine_is_refused_by_the_database(store, machine):
    with store.tx() as s:
        row = factories.entity(s, machine, sorted(MACHINES[machine].initial)[0])
        model, row_id = type(row), row.id
    with pytest.raises(IntegrityError, match=r"ck_[a-z_]+_state"), store.tx() as s:
        s.execute(update(model).where(model.id == row_id).values(state="nonsense"))
    with store.read() as s:
        assert s.get(model, row_id).state in MACHINES[machine].initial


def test_a_card_state_and_a_temporary_card_state_both_fit_the_credentials_table(store):
    with store.tx() as s:
        factories.credential(s, "issued", kind="card")
        factories.credential(s, "assigned", kind="temp_card")


@pytest.mark.parametrize(("kind", "state"), [("card", "assigned"), ("temp_card", "issued")])
def test_a_credential_in_a_state_of_the_other_kind_is_refused_by_the_database(store, kind, state):
    with pytest.raises(IntegrityError, match="ck_credentials_state"), store.tx() as s:
        factories.credential(s, state, kind=kind)


def _attempt(session, station: str, state: str = "in_progress") -> ProductionAttempt:
    return ProductionAttempt(
        state=state,
        credential_id=factories.credential(session, "producing").id,
        number=1,
        station_id=station,
        station_instance="i1",
        lease_expires_at=utcnow() + dt.timedelta(seconds=30),
    )


def _insert(store, station: str, state: str = "in_progress") -> None:
    """A raw insert, past create(): what the database alone makes of it."""
    with store.tx() as s:
        s.add(_attempt(s, station, state))


def _create(store, station: str, *, card_id: int | None = None) -> ProductionAttempt:
    with store.tx() as s:
        row = _attempt(s, station)
        if card_id is not None:
            row.credential_id, row.number = card_id, 2
        return create(s, row, actor=f"station:{station}")


def _live_at(store, station: str) -> int:
    with store.read() as s:
        return s.execute(
            text(
                "SELECT COUNT(*) FROM production_attempts "
                "WHERE station_id = :station AND state = 'in_progress'"
            ),
            {"station": station},
        ).scalar_one()


def test_a_second_live_attempt_at_one_station_is_refused_by_the_database(store):
    _insert(store, "ST7")
    with pytest.raises(IntegrityError):
        _insert(store, "ST7")
    assert _live_at(store, "ST7") == 1
    _insert(store, "ST8")  # other stations, and ended attempts, are no obstacle
    _insert(store, "ST7", "spoiled")
    _insert(store, "ST7", "succeeded")


def test_create_turns_a_second_live_attempt_into_a_state_conflict(store):
    _create(store, "ST7")
    with pytest.raises(StateConflict, match="uq_live_attempt_per_station") as err:
        _create(store, "ST7")
    assert (err.value.entity, err.value.action, err.value.current) == (
        "attempt",
        "create",
        "in_progress",
    )
    assert _live_at(store, "ST7") == 1


def test_create_turns_a_second_live_attempt_for_a_card_into_a_state_conflict(store):
    card_id = _create(store, "ST1").credential_id
    with pytest.raises(StateConflict, match="uq_live_attempt_per_credential"):
        _create(store, "ST2", card_id=card_id)
    assert _live_at(store, "ST2") == 0


def test_the_upgrade_names_a_station_with_two_live_attempts_and_keeps_nothing(tmp_path):
    from db.engine import sqlite_url
    from db.migrate import current_revision, upgrade

    store = open_store(sqlite_url(tmp_path))
    upgrade(store, "0008")
    with store.engine.begin() as c:
        c.execute(
            text(
                "insert into credentials (id, kind, line, requested_by, attempt_count, state,"
                " version, created_at, updated_at, recover_escrow) values"
                " (1, 'temp_card', 'default', 't', 1, 'producing', 1, '2026-01-01',"
                " '2026-01-01', 0), (2, 'temp_card', 'default', 't', 1, 'producing', 1,"
                " '2026-01-01', '2026-01-01', 0)"
            )
        )
        c.execute(
            text(
                "insert into production_attempts (credential_id, number, station_id,"
                " station_instance, lease_expires_at, state, version, created_at, updated_at)"
                " values (1, 1, 'ST4', 'i', '2026-01-01', 'in_progress', 1, '2026-01-01',"
                " '2026-01-01'), (2, 1, 'ST4', 'i', '2026-01-01', 'in_progress', 1,"
                " '2026-01-01', '2026-01-01')"
            )
        )
    with pytest.raises(RuntimeError, match="ST4"):
        upgrade(store)
    assert current_revision(store) == "0008"
    with store.engine.connect() as c:
        assert inspect(c).get_check_constraints("users") == []
    store.dispose()
