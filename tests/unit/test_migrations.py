"""The Alembic migrations build exactly the schema the models describe, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db.engine import open_store
from db.migrate import current_revision, head_revision, upgrade
from db.models import Base


def test_a_migrated_database_matches_the_models(database_url):
    store = open_store(database_url, pool_size=1)
    assert current_revision(store) == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    store.dispose()


def test_upgrading_again_is_harmless(database_url):
    store = open_store(database_url, pool_size=1)
    assert upgrade(store) == head_revision()
    store.dispose()
