"""The real services the tests use, and how each test gets its own private copy.

PostgreSQL, RabbitMQ and Redis run on this machine and CI's (127.0.0.1, standard ports;
override with CARDLINE_TEST_PG, CARDLINE_TEST_AMQP, CARDLINE_TEST_REDIS). A test that
needs a service that is not running is skipped with the command that starts it, except
under CI=true, where it fails: CI must never pass by skipping.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

from ops.services import AMQP_URL, REDIS_URL, URLS, missing_message, reachable


def require(service: str) -> None:
    """Skip (locally) or fail (CI=true) when ``service`` is not running."""
    if reachable(service):
        return
    message = missing_message(service)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class Backend:
    """A status store and broker pair the same suite runs against."""

    db: str  # sqlite | postgres
    broker: str  # memory | rabbitmq | redis

    @property
    def id(self) -> str:
        return f"{self.db}+{self.broker}"

    def broker_url(self) -> str:
        return {"memory": "memory://", "rabbitmq": AMQP_URL, "redis": REDIS_URL}[self.broker]

    def require(self) -> None:
        for service in (self.db, self.broker):
            if service in URLS:
                require(service)


LINE_BACKENDS = [
    Backend("sqlite", "memory"),
    Backend("postgres", "rabbitmq"),
    Backend("postgres", "redis"),
]


class PgDatabases:
    """PostgreSQL databases private to this test session, copied from one migrated template.

    ``fresh()`` hands a test the session's own database emptied of every row (tables
    truncated, identities restarted, the audit chain back at genesis): as clean as a new
    copy of the template, at a fraction of CREATE DATABASE's cost on a busy server.
    ``create()`` makes a whole separate copy, for tests whose processes outlive a test.
    """

    _names = itertools.count()

    def __init__(self, admin_url: str, prefix: str) -> None:
        import psycopg

        parts = urlsplit(admin_url.replace("postgresql+psycopg", "postgresql"))
        self._conninfo = (
            f"host={parts.hostname} port={parts.port or 5432} "
            f"user={parts.username or 'postgres'} dbname={parts.path[1:] or 'postgres'}"
        )
        self._base = admin_url.rsplit("/", 1)[0]
        self._prefix = prefix
        self._conn = psycopg.connect(self._conninfo, autocommit=True)
        self.template = f"{prefix}_tmpl"
        self._shared: str | None = None
        self._shared_conn: Any = None

    def url(self, name: str) -> str:
        return f"{self._base}/{name}"

    def _execute(self, sql: str) -> None:
        """Run ``sql`` on the admin connection, connecting again once if the server was
        restarted under it (the chaos and outage tests restart PostgreSQL)."""
        import psycopg

        for attempt in (1, 2):
            try:
                if self._conn.closed:
                    self._conn = psycopg.connect(self._conninfo, autocommit=True)
                self._conn.execute(sql)
                return
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                self._conn = psycopg.connect(self._conninfo, autocommit=True)

    def _drop(self, name: str) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def build_template(self) -> None:
        from db.engine import open_store
        from db.migrate import upgrade

        self._drop(self.template)
        self._execute(f'CREATE DATABASE "{self.template}"')
        store = open_store(self.url(self.template), pool_size=1)
        upgrade(store)
        store.dispose()

    def create(self) -> str:
        name = f"{self._prefix}_{next(self._names)}"
        self._drop(name)
        self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def fresh(self) -> str:
        """The session's private database, emptied of every row."""
        import psycopg

        from db.audit import GENESIS_HASH
        from db.models import Base

        if self._shared is None:
            self._shared = self.create()
        info = self._conninfo.rsplit("dbname=", 1)[0] + f"dbname={self._shared}"
        tables = [t.name for t in Base.metadata.sorted_tables if t.name != "audit_head"]
        empty = (
            f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE; "
            f"UPDATE audit_head SET seq = 0, hash = '{GENESIS_HASH}'"
        )
        for attempt in (1, 2):  # again once after a server restart
            try:
                if self._shared_conn is None or self._shared_conn.closed:
                    self._shared_conn = psycopg.connect(info, autocommit=True)
                self._shared_conn.execute(empty)
                break
            except psycopg.OperationalError:
                self._shared_conn = None
                if attempt == 2:
                    raise
        return self._shared

    def drop(self, name: str) -> None:
        if name != self._shared:
            self._drop(name)

    def close(self) -> None:
        if self._shared_conn is not None:
            self._shared_conn.close()
            self._drop(self._shared or "")
        self._drop(self.template)
        self._conn.close()
