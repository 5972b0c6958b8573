"""The Alembic migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db.engine import open_store
from db.migrate import current_revision, head_revision, upgrade
from db.models import Base


# SQLite's reflection skips expression indexes (lower(email), lower(upn)), with a warning;
# test_the_case_insensitive_holder_indexes_exist checks them there.
@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")
def test_a_migrated_database_matches_the_models(database_url):
    store = open_store(database_url, pool_size=1)
    assert current_revision(store) == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    store.dispose()


def test_the_case_insensitive_holder_indexes_exist(database_url):
    from sqlalchemy import text

    store = open_store(database_url, pool_size=1)
    with store.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'users'"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE tablename = 'users'"
        names = set(conn.execute(text(sql)).scalars())
    assert {"ix_users_lower_email", "ix_users_lower_upn"} <= names
    store.dispose()


def test_upgrading_again_is_harmless(database_url):
    store = open_store(database_url, pool_size=1)
    assert upgrade(store) == head_revision()
    store.dispose()


def test_a_populated_sqlite_store_upgrades_keeping_every_reference(tmp_path):
    from sqlalchemy import text

    from db.engine import open_store, sqlite_url
    from db.migrate import upgrade

    store = open_store(sqlite_url(tmp_path))
    upgrade(store, "0006")
    with store.engine.begin() as c:
        c.execute(
            text(
                "insert into users (id, email, first_name, last_name, upn, organization, "
                "org_unit, state, version, created_at, updated_at, roles) values (7, "
                "'a@example.org', 'A', 'B', 'a@corp', 'O', 'U', 'active', 1, "
                "'2026-01-01', '2026-01-01', '[]')"
            )
        )
        c.execute(
            text(
                "insert into credentials (id, kind, user_id, line, requested_by, attempt_count,"
                " state, version, created_at, updated_at, recover_escrow) values (3, 'card', 7,"
                " 'default', 't', 0, 'requested', 1, '2026-01-01', '2026-01-01', 0)"
            )
        )
    upgrade(store)  # 0007 rebuilds the users table on SQLite
    with store.engine.connect() as c:
        assert c.execute(text("pragma foreign_key_check")).all() == []
        assert c.execute(text("select user_id from credentials")).scalar() == 7
        assert c.execute(text("pragma foreign_keys")).scalar() == 1
    store.dispose()


def test_0013_keeps_the_cprs_request_ids_used_and_gives_cpr_created_users_their_source(
    tmp_path,
):
    from sqlalchemy import text

    from db.engine import open_store, sqlite_url
    from db.migrate import upgrade

    store = open_store(sqlite_url(tmp_path))
    upgrade(store, "0012")
    with store.engine.begin() as c:
        for uid, email in ((7, "a@example.org"), (8, "b@example.org")):
            c.execute(
                text(
                    "insert into users (id, email, first_name, last_name, upn, organization,"
                    " org_unit, state, version, created_at, updated_at) values (:id, :email,"
                    " 'A', 'B', :email, 'O', 'U', 'active', 1, '2026-01-01', '2026-01-01')"
                ),
                {"id": uid, "email": email},
            )
        # User 7 was created by a CPR of idms1, user 8 by an operator.
        for seq, uid, reason in ((1, 7, "CPR R7 of idms1"), (2, 8, "user created")):
            c.execute(
                text(
                    "insert into audit_events (seq, at, actor, entity, entity_id, action,"
                    " to_state, reason, prev_hash, hash) values (:seq, '2026-01-01',"
                    " 'principal:1', 'user', :uid, 'create', 'active', :reason, '', '')"
                ),
                {"seq": seq, "uid": str(uid), "reason": reason},
            )
        c.execute(
            text(
                "insert into cprs (user_id, identity_system, request_id, payload, signature,"
                " received_at, replaced) values (7, 'idms1', 'R7', '{}', 's', '2026-01-01', 0)"
            )
        )
    upgrade(store)
    with store.engine.connect() as c:
        sources = c.execute(text("select id, source from users order by id")).all()
        assert [tuple(r) for r in sources] == [(7, "cpr:idms1"), (8, None)]
        receipts = c.execute(
            text("select identity_system, request_id, user_id, issued_at from cpr_receipts")
        ).all()
        assert [tuple(r) for r in receipts] == [("idms1", "R7", 7, None)]
    store.dispose()
