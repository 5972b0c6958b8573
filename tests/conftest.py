"""Shared fixtures: a fresh, migrated status store per test (SQLite and PostgreSQL),
backend pairs for the line, and a secret box."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from db.engine import Store, open_store, sqlite_url
from db.migrate import upgrade
from db.secrets import SecretBox
from ops.brokers import flush
from ops.services import PG_URL
from tests.backends import LINE_BACKENDS, Backend, PgDatabases, require

DB_BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database built once; each test gets its own copy."""
    folder = tmp_path_factory.mktemp("template")
    st = open_store(sqlite_url(folder))
    upgrade(st)
    st.dispose()
    return folder / "cardline.db"


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    require("postgres")
    dbs = PgDatabases(PG_URL, prefix=f"cardline_test_{os.getpid()}")
    dbs.build_template()
    yield dbs
    dbs.close()


def _database_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "sqlite":
        shutil.copy(request.getfixturevalue("sqlite_template"), tmp_path / "cardline.db")
        yield sqlite_url(tmp_path)
        return
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    yield dbs.url(dbs.fresh())


@pytest.fixture(params=DB_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A private, migrated status store: a SQLite file, or a PostgreSQL database."""
    yield from _database_url(request.param, tmp_path, request)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    st = open_store(database_url, pool_size=5)
    yield st
    st.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """The embedded default only (for tests about SQLite itself)."""
    url = next(_database_url("sqlite", tmp_path, request))
    st = open_store(url)
    yield st
    st.dispose()


@pytest.fixture(params=LINE_BACKENDS, ids=lambda b: b.id)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, str]]:
    """A backend pair and its private store URL; real brokers start with empty queues."""
    b: Backend = request.param
    b.require()
    gen = _database_url(b.db, tmp_path, request)
    url = next(gen)
    if b.broker != "memory":
        from workers.broker import WORKER_QUEUES

        flush(b.broker_url(), [*WORKER_QUEUES, "line.default"])
    yield b, url
    next(gen, None)


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(os.urandom(32))
