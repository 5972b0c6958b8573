"""The Alembic migrations build exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db.engine import open_store, sqlite_url
from db.migrate import current_revision, head_revision, upgrade
from db.models import Base


def test_a_migrated_database_matches_the_models(tmp_path):
    store = open_store(sqlite_url(tmp_path))
    assert upgrade(store) == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    store.dispose()


def test_upgrading_twice_is_harmless(tmp_path):
    store = open_store(sqlite_url(tmp_path))
    upgrade(store)
    upgrade(store)
    assert current_revision(store) == head_revision()
    store.dispose()
